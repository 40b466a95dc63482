// The CUDA backend: every op of backend.h on one GPU, mirroring native/cpu op for op (same
// formulas, same accumulation precision where the CPU uses double, same dropout masks), in
// float32 and, for bf16 compute, with bf16 products on the tensor cores (cuBLASLt, and the
// attention kernels of flash_attention_bf16.cuh).
//
// It is built as its own shared library, repadapter_cuda.so, and loaded at run time by
// native/core/backend_registry.cc through one C entry point (repadapter_create_cuda_backend,
// cuda_backend.cu), so the core and the Node addon load on machines without CUDA or cuBLAS.
//
// Execution model: all work goes to one non-blocking stream owned by the backend, in call order.
// Ops return as soon as their kernels are queued; download(), synchronize() and, outside a
// recording, a cross_entropy against integer labels (which checks the labels) wait for the stream. Errors of
// asynchronous work surface at the next call that checks (each launch, synchronize, download).
//
// Threads: every entry point takes one recursive mutex and makes the backend's device current
// on the calling thread, so calls from several threads are safe (they serialise), and the
// scratch buffer and the gemm plan cache are never shared between two ops in flight.
#pragma once
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "../core/backend.h"

namespace repadapter {

class CudaBackend final : public Backend {
 public:
  // Initialises CUDA on `device`: Unavailable with a clear message when there is no driver, no
  // device, or the GPU is one this build has no kernels for.
  static Status Create(int device, std::unique_ptr<CudaBackend>* out);
  ~CudaBackend() override;

  Device device() const override { return Device::kCUDA; }
  const char* name() const override { return "cuda"; }

  Status allocate(size_t bytes, void** out) override;
  void release(void* ptr) override;
  Status upload(void* dst, const void* host_src, size_t bytes) override;
  Status download(void* host_dst, const void* src, size_t bytes) override;
  Status copy(void* dst, const void* src, size_t bytes) override;
  Status fill(float* x, int64_t n, float value) override;
  Status synchronize() override;

  // CUDA graphs of the backend's stream (cuda_backend.cu). Recording is per stream, and every op
  // runs on stream_: the caller must not give this backend work from another thread meanwhile
  // (the addon's compute thread is the only one).
  Status begin_capture() override;
  Status end_capture(void** graph) override;
  Status replay(void* graph) override;
  void release_graph(void* graph) override;

  Status gemm(const Gemm& g) override;
  Status convert_to_bf16(const float* x, uint16_t* y, int64_t n) override;
  // Every GPU this backend runs on (sm_80 and later) has bf16 tensor cores.
  bool bf16_native() const override { return true; }
  Status bias_backward(const float* dy, float* db, int64_t M, int64_t N) override;

  Status patchify(const float* images, float* patches, int64_t B, int64_t image_size,
                  int64_t patch) override;
  Status patchify_backward(const float* d_patches, float* d_images, int64_t B,
                           int64_t image_size, int64_t patch) override;
  Status tokens_forward(const float* embedded, const float* cls, const float* pos, float* x,
                        int64_t B, int64_t P, int64_t D) override;
  Status tokens_backward(const float* dx, float* d_embedded, float* d_cls, float* d_pos,
                         int64_t B, int64_t P, int64_t D) override;

  Status layernorm_forward(const float* x, int64_t ldx, const float* w, const float* b, float* y,
                           uint16_t* y_bf16, int64_t ldy, float* mean, float* rstd, int64_t M,
                           int64_t D, float eps) override;
  Status layernorm_backward(const float* dy, int64_t ldy, const float* x, int64_t ldx,
                            const float* w, const float* mean, const float* rstd, float* dx,
                            float* dw, float* db, int64_t M, int64_t D) override;

  Status gelu_forward(const float* x, float* y, int64_t n) override;
  Status gelu_backward(const float* x, float* d, int64_t n) override;
  Status gelu_backward_bf16(const uint16_t* x, float* d, int64_t n) override;
  Status gelu_forward_bf16(const uint16_t* x, uint16_t* y, int64_t n) override;
  Status gelu_backward_bf16_grads(const uint16_t* x, const uint16_t* dy, uint16_t* dx,
                                  int64_t n) override;

  // Dh = 32 or 64 (fused kernels, attention.cu): saved = lse [B,H,N], then a copy of out
  // [B,N,H,Dh]. Other Dh: saved = the softmax probabilities [B,H,N,N].
  int64_t attention_saved_floats(int64_t B, int64_t N, int64_t H, int64_t Dh,
                                 DType compute) const override;
  Status attention_forward(const void* qkv, float* out, uint16_t* out_bf16, float* saved,
                           int64_t B, int64_t N, int64_t H, int64_t Dh, DType compute) override;
  Status attention_backward(const float* d_out, const void* qkv, const float* saved,
                            float* d_qkv, uint16_t* d_qkv_bf16, int64_t B, int64_t N, int64_t H,
                            int64_t Dh, DType compute) override;

  Status dropout_forward(float* z, int64_t n, float p, uint64_t seed, const uint64_t* step_key,
                         uint64_t site) override;
  Status dropout_backward(float* dz, int64_t n, float p, uint64_t seed, const uint64_t* step_key,
                          uint64_t site) override;
  Status adapter_up_forward(const float* x, const float* z, const float* w, const float* b,
                            float* y, int64_t M, int64_t D, int64_t R, int64_t G,
                            float scale) override;
  Status adapter_up_backward(const float* dy, const float* z, const float* w, float* dz,
                             float* dw, float* db, int64_t M, int64_t D, int64_t R, int64_t G,
                             float scale) override;
  Status layernorm_adapter_forward(const float* x, int64_t ldx, const float* ln_w,
                                   const float* ln_b, float eps, const float* A,
                                   const float* a_bias, const float* up_w, const float* up_b,
                                   float scale, float p, uint64_t seed, const uint64_t* step_key,
                                   uint64_t site, float* a, float* z, float* u, uint16_t* u_bf16,
                                   float* mean, float* rstd, int64_t M, int64_t D, int64_t R,
                                   int64_t G) override;
  Status adapter_fold(float* W, float* c, const float* A, const float* a, const float* w,
                      const float* b, int64_t O, int64_t D, int64_t R, int64_t G,
                      float scale) override;

  Status residual_add(float* y, const float* x, const float* branch, const float* keep_scale,
                      int64_t B, int64_t row) override;
  Status residual_backward(const float* dx, float* d_branch, uint16_t* d_branch_bf16,
                           const float* keep_scale, int64_t B, int64_t row) override;

  Status cross_entropy(const float* logits, const int32_t* labels, const float* soft_targets,
                       float smoothing, float* loss, float* d_logits, int64_t B,
                       int64_t C) override;

  Status adamw_update(float* param, const float* grad, float* m, float* v, const UpdateJob* jobs,
                      int64_t count, int64_t total, const AdamWScalars* s) override;
  Status sgd_update(float* param, const float* grad, float* buf, const UpdateJob* jobs,
                    int64_t count, int64_t total, const SgdScalars* s) override;
  Status sum_squares(const float* x, int64_t n, double* out) override;
  Status clip_grad_scale(const double* sum_squares, double pre_scale, double max_norm,
                         float* grad_scale) override;

  // ---- internals shared by the op files (not part of the Backend interface) ---------------
  // The matrix-product precision. kFp32 (the default) is CUBLAS_COMPUTE_32F: true float32
  // products with float32 accumulation, no TF32, so results match the CPU to ~1e-5 relative.
  // kTf32 (environment REPADAPTER_CUDA_TF32=1) lets cuBLAS round inputs to TF32 on the tensor
  // cores: several times faster, ~1e-3 relative; the checks in native/tests assume kFp32.
  enum class MathMode { kFp32, kTf32 };
  MathMode math_mode() const { return math_mode_; }
  int device_index() const { return device_; }
  const std::string& device_name() const { return device_name_; }

  cudaStream_t stream() const { return stream_; }
  // Blocks for a grid-stride loop over n elements with `threads` per block.
  unsigned blocks_for(int64_t n, int threads = 256) const;
  int sm_count() const { return sm_count_; }
  // Device scratch of at least `bytes`, valid until the next scratch() call. Ops run in stream
  // order and under the backend's lock, so one buffer serves them all; growing it frees the old
  // one, which cudaFree does only after all queued work has finished.
  Status scratch(size_t bytes, void** out);
  // A second device buffer of at least `bytes`, for float32 copies that must live beside
  // scratch (attention's widened bf16 qkv on the paths without tensor cores); the same rules.
  Status widened(size_t bytes, float** out);
  Status grow(void** buffer, size_t* held, size_t bytes, const char* what);
  // The status of the kernel launched last: its launch error, or an earlier asynchronous one.
  Status launched(const char* kernel) const;
  // A non-kernel CUDA runtime call's error as a Status naming the call.
  static Status from_cuda(cudaError_t e, const char* what);
  // gemm without taking the lock again (attention calls it per batch slice). A bf16 gemm
  // (B_bf16) writes its bf16 copy of A into scratch: its caller must not be holding scratch
  // data, and no operand may live in scratch (it refuses such a call).
  Status gemm_unlocked(const Gemm& g);

 private:
  CudaBackend() = default;
  Status init(int device);
  // Makes this backend's device current on the calling thread (the current device is
  // per host thread in CUDA, and the compute thread is not the thread that created us).
  Status make_current() const;

  // One matrix-product shape, compiled once (gemm.cu): cuBLASLt descriptors and the algorithm
  // its heuristic chose. `lt_ok` false: no cuBLASLt algorithm fits, use the fallback.
  struct GemmPlan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
    bool lt_ok = false;
    GemmPlan() = default;
    GemmPlan(const GemmPlan&) = delete;
    GemmPlan& operator=(const GemmPlan&) = delete;
    ~GemmPlan() {
      if (desc) cublasLtMatmulDescDestroy(desc);
      if (a) cublasLtMatrixLayoutDestroy(a);
      if (b) cublasLtMatrixLayoutDestroy(b);
      if (c) cublasLtMatrixLayoutDestroy(c);
    }
  };
  using GemmKey = std::array<int64_t, 20>;
  Status gemm_plan(const Gemm& g, const GemmKey& key, GemmPlan** out);
  Status gemm_fallback(const Gemm& g);

  int device_ = 0;
  std::string device_name_;
  int sm_count_ = 1;
  MathMode math_mode_ = MathMode::kFp32;
  cudaStream_t stream_ = nullptr;
  cublasLtHandle_t lt_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  void* workspace_ = nullptr;  // cuBLASLt workspace
  size_t workspace_bytes_ = 0;
  void* scratch_ = nullptr;
  size_t scratch_bytes_ = 0;
  void* widened_ = nullptr;
  size_t widened_bytes_ = 0;
  bool capturing_ = false;  // between begin_capture and end_capture
  // Recordings bake in the scratch addresses; growing a scratch buffer frees it. Each recording
  // keeps the generation it was made in, and replay refuses one made before a buffer last moved.
  uint64_t scratch_generation_ = 0;
  std::map<void*, uint64_t> graph_generation_;
  std::map<GemmKey, std::unique_ptr<GemmPlan>> plans_;
  mutable std::recursive_mutex mutex_;

  friend struct CudaLock;
};

// Every public entry point starts with RA_CUDA_ENTRY: the lock, then the device.
struct CudaLock {
  explicit CudaLock(const CudaBackend& b) : lock(b.mutex_) {}
  std::lock_guard<std::recursive_mutex> lock;
};

}  // namespace repadapter

#define RA_CUDA_ENTRY()                          \
  ::repadapter::CudaLock _ra_cuda_lock(*this);   \
  RA_RETURN_IF_ERROR(make_current())
