// The CPU backend: the reference implementation every other backend is checked against.
// Matrix products go through oneDNN (float32, and bf16 on CPUs with bf16 dot products); every other
// kernel is a plain loop nest parallelised with OpenMP, the same thread pool oneDNN uses, so the
// two never fight over the cores.
#pragma once
#include "../core/backend.h"

namespace repadapter {

class CpuBackend final : public Backend {
 public:
  Device device() const override { return Device::kCPU; }
  const char* name() const override { return "cpu"; }

  Status allocate(size_t bytes, void** out) override;
  void release(void* ptr) override;
  Status upload(void* dst, const void* host_src, size_t bytes) override;
  Status download(void* host_dst, const void* src, size_t bytes) override;
  Status copy(void* dst, const void* src, size_t bytes) override;
  Status fill(float* x, int64_t n, float value) override;
  Status synchronize() override { return Status::Ok(); }

  Status gemm(const Gemm& g) override;
  Status convert_to_bf16(const float* x, uint16_t* y, int64_t n) override;
  bool bf16_native() const override;
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

  // saved: the softmax probabilities [B,H,N,N].
  int64_t attention_saved_floats(int64_t B, int64_t N, int64_t H, int64_t, DType) const override {
    return B * H * N * N;
  }
  Status attention_forward(const void* qkv, float* out, uint16_t* out_bf16, float* probs,
                           int64_t B, int64_t N, int64_t H, int64_t Dh, DType compute) override;
  Status attention_backward(const float* d_out, const void* qkv, const float* probs,
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
};

// The process-wide CPU backend (stateless apart from oneDNN's primitive cache).
Backend& cpu_backend();

}  // namespace repadapter
