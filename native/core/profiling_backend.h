// A Backend that forwards every op to another one and adds up the wall time each op takes.
// Wrapped around a model's backend it gives the per-op profile the benchmark prints, with no
// change to the model. Ops are timed after a synchronize, so asynchronous backends are
// measured too (at the price of the overlap they would otherwise have).
#pragma once
#include <chrono>
#include <map>
#include <string>

#include "backend.h"

namespace repadapter {

class ProfilingBackend final : public Backend {
 public:
  struct Entry { double seconds = 0; int64_t calls = 0; double flops = 0; };

  explicit ProfilingBackend(Backend& inner) : inner_(inner) {}
  const std::map<std::string, Entry>& entries() const { return entries_; }
  void reset() { entries_.clear(); }

  Device device() const override { return inner_.device(); }
  const char* name() const override { return inner_.name(); }

  Status allocate(size_t bytes, void** out) override { return inner_.allocate(bytes, out); }
  void release(void* ptr) override { inner_.release(ptr); }
  Status upload(void* d, const void* s, size_t n) override { return time("upload", 0, [&] { return inner_.upload(d, s, n); }); }
  Status download(void* d, const void* s, size_t n) override { return time("download", 0, [&] { return inner_.download(d, s, n); }); }
  Status copy(void* d, const void* s, size_t n) override { return time("copy", 0, [&] { return inner_.copy(d, s, n); }); }
  Status fill(float* x, int64_t n, float v) override { return time("fill", 0, [&] { return inner_.fill(x, n, v); }); }
  Status synchronize() override { return inner_.synchronize(); }

  Status gemm(const Gemm& g) override {
    // Named by shape class so the profile tells the big Linears from attention's small products.
    std::string key = "gemm " + std::to_string(g.M) + "x" + std::to_string(g.N) + "x" + std::to_string(g.K) +
                      (g.batch > 1 ? " ×" + std::to_string(g.batch) : "") + (g.trans_a ? " Aᵀ" : "") + (g.trans_b ? " Bᵀ" : "");
    return time(key, 2.0 * g.M * g.N * g.K * g.batch, [&] { return inner_.gemm(g); });
  }
  Status convert_to_bf16(const float* x, uint16_t* y, int64_t n) override {
    return time("convert_to_bf16", 0, [&] { return inner_.convert_to_bf16(x, y, n); });
  }
  bool bf16_native() const override { return inner_.bf16_native(); }
  Status bias_backward(const float* dy, float* db, int64_t M, int64_t N) override {
    return time("bias_backward", 0, [&] { return inner_.bias_backward(dy, db, M, N); });
  }
  Status patchify(const float* i, float* p, int64_t B, int64_t S, int64_t k) override {
    return time("patchify", 0, [&] { return inner_.patchify(i, p, B, S, k); });
  }
  Status patchify_backward(const float* dp, float* di, int64_t B, int64_t S, int64_t k) override {
    return time("patchify_backward", 0, [&] { return inner_.patchify_backward(dp, di, B, S, k); });
  }
  Status tokens_forward(const float* e, const float* c, const float* p, float* x, int64_t B, int64_t P, int64_t D) override {
    return time("tokens_forward", 0, [&] { return inner_.tokens_forward(e, c, p, x, B, P, D); });
  }
  Status tokens_backward(const float* dx, float* de, float* dc, float* dp, int64_t B, int64_t P, int64_t D) override {
    return time("tokens_backward", 0, [&] { return inner_.tokens_backward(dx, de, dc, dp, B, P, D); });
  }
  Status layernorm_forward(const float* x, int64_t ldx, const float* w, const float* b, float* y, uint16_t* y16,
                           int64_t ldy, float* mean, float* rstd, int64_t M, int64_t D, float eps) override {
    return time("layernorm_forward", 0,
                [&] { return inner_.layernorm_forward(x, ldx, w, b, y, y16, ldy, mean, rstd, M, D, eps); });
  }
  Status layernorm_backward(const float* dy, int64_t ldy, const float* x, int64_t ldx, const float* w,
                            const float* mean, const float* rstd, float* dx, float* dw, float* db, int64_t M,
                            int64_t D) override {
    return time("layernorm_backward", 0,
                [&] { return inner_.layernorm_backward(dy, ldy, x, ldx, w, mean, rstd, dx, dw, db, M, D); });
  }
  Status gelu_forward(const float* x, float* y, int64_t n) override {
    return time("gelu_forward", 0, [&] { return inner_.gelu_forward(x, y, n); });
  }
  Status gelu_backward(const float* x, float* d, int64_t n) override {
    return time("gelu_backward", 0, [&] { return inner_.gelu_backward(x, d, n); });
  }
  Status gelu_backward_bf16(const uint16_t* x, float* d, int64_t n) override {
    return time("gelu_backward", 0, [&] { return inner_.gelu_backward_bf16(x, d, n); });
  }
  Status gelu_forward_bf16(const uint16_t* x, uint16_t* y, int64_t n) override {
    return time("gelu_forward", 0, [&] { return inner_.gelu_forward_bf16(x, y, n); });
  }
  Status gelu_backward_bf16_grads(const uint16_t* x, const uint16_t* dy, uint16_t* dx, int64_t n) override {
    return time("gelu_backward", 0, [&] { return inner_.gelu_backward_bf16_grads(x, dy, dx, n); });
  }
  int64_t attention_saved_floats(int64_t B, int64_t N, int64_t H, int64_t Dh, DType compute) const override {
    return inner_.attention_saved_floats(B, N, H, Dh, compute);
  }
  Status attention_forward(const void* qkv, float* out, uint16_t* out_bf16, float* saved, int64_t B, int64_t N,
                           int64_t H, int64_t Dh, DType compute) override {
    return time("attention_forward", 4.0 * B * H * N * N * Dh,
                [&] { return inner_.attention_forward(qkv, out, out_bf16, saved, B, N, H, Dh, compute); });
  }
  Status attention_backward(const float* d_out, const void* qkv, const float* saved, float* d_qkv,
                            uint16_t* d_qkv_bf16, int64_t B, int64_t N, int64_t H, int64_t Dh,
                            DType compute) override {
    return time("attention_backward", 8.0 * B * H * N * N * Dh, [&] {
      return inner_.attention_backward(d_out, qkv, saved, d_qkv, d_qkv_bf16, B, N, H, Dh, compute);
    });
  }
  Status dropout_forward(float* z, int64_t n, float p, uint64_t seed, const uint64_t* key, uint64_t site) override {
    return time("dropout", 0, [&] { return inner_.dropout_forward(z, n, p, seed, key, site); });
  }
  Status dropout_backward(float* dz, int64_t n, float p, uint64_t seed, const uint64_t* key, uint64_t site) override {
    return time("dropout", 0, [&] { return inner_.dropout_backward(dz, n, p, seed, key, site); });
  }
  Status adapter_up_forward(const float* x, const float* z, const float* w, const float* b, float* y, int64_t M,
                            int64_t D, int64_t R, int64_t G, float scale) override {
    return time("adapter_up_forward", 2.0 * M * D * R / G,
                [&] { return inner_.adapter_up_forward(x, z, w, b, y, M, D, R, G, scale); });
  }
  Status adapter_up_backward(const float* dy, const float* z, const float* w, float* dz, float* dw, float* db,
                             int64_t M, int64_t D, int64_t R, int64_t G, float scale) override {
    return time("adapter_up_backward", 4.0 * M * D * R / G,
                [&] { return inner_.adapter_up_backward(dy, z, w, dz, dw, db, M, D, R, G, scale); });
  }
  Status layernorm_adapter_forward(const float* x, int64_t ldx, const float* ln_w, const float* ln_b, float eps,
                                   const float* A, const float* a_bias, const float* up_w, const float* up_b,
                                   float scale, float p, uint64_t seed, const uint64_t* key, uint64_t site, float* a,
                                   float* z, float* u, uint16_t* u16, float* mean, float* rstd, int64_t M, int64_t D,
                                   int64_t R, int64_t G) override {
    return time("layernorm_adapter_forward", 2.0 * M * D * R + 2.0 * M * D * R / G, [&] {
      return inner_.layernorm_adapter_forward(x, ldx, ln_w, ln_b, eps, A, a_bias, up_w, up_b, scale, p, seed, key,
                                              site, a, z, u, u16, mean, rstd, M, D, R, G);
    });
  }
  Status adapter_fold(float* W, float* c, const float* A, const float* a, const float* w, const float* b, int64_t O,
                      int64_t D, int64_t R, int64_t G, float scale) override {
    return time("adapter_fold", 0, [&] { return inner_.adapter_fold(W, c, A, a, w, b, O, D, R, G, scale); });
  }
  Status residual_add(float* y, const float* x, const float* branch, const float* keep, int64_t B,
                      int64_t row) override {
    return time("residual_add", 0, [&] { return inner_.residual_add(y, x, branch, keep, B, row); });
  }
  Status residual_backward(const float* dx, float* d_branch, uint16_t* d_branch16, const float* keep, int64_t B,
                           int64_t row) override {
    return time("residual_backward", 0,
                [&] { return inner_.residual_backward(dx, d_branch, d_branch16, keep, B, row); });
  }
  Status cross_entropy(const float* logits, const int32_t* labels, const float* soft, float smoothing, float* loss,
                       float* d_logits, int64_t B, int64_t C) override {
    return time("cross_entropy", 0,
                [&] { return inner_.cross_entropy(logits, labels, soft, smoothing, loss, d_logits, B, C); });
  }
  Status adamw_update(float* p, const float* g, float* m, float* v, const UpdateJob* jobs, int64_t count,
                      int64_t total, const AdamWScalars* s) override {
    return time("optimizer", 0, [&] { return inner_.adamw_update(p, g, m, v, jobs, count, total, s); });
  }
  // Timing synchronizes after every op, which a recording cannot contain: no graphs here.
  Status begin_capture() override {
    return Unavailable("a profiled model times every op and records no graphs");
  }
  Status sgd_update(float* p, const float* g, float* buf, const UpdateJob* jobs, int64_t count, int64_t total,
                    const SgdScalars* s) override {
    return time("optimizer", 0, [&] { return inner_.sgd_update(p, g, buf, jobs, count, total, s); });
  }
  Status sum_squares(const float* x, int64_t n, double* out) override {
    return time("sum_squares", 0, [&] { return inner_.sum_squares(x, n, out); });
  }
  Status clip_grad_scale(const double* sum_squares, double pre_scale, double max_norm, float* grad_scale) override {
    return time("optimizer", 0, [&] { return inner_.clip_grad_scale(sum_squares, pre_scale, max_norm, grad_scale); });
  }

 private:
  template <typename F>
  Status time(const std::string& key, double flops, F&& op) {
    const auto start = std::chrono::steady_clock::now();
    Status status = op();
    if (status.ok()) status = inner_.synchronize();
    Entry& e = entries_[key];
    e.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    e.calls += 1;
    e.flops += flops;
    return status;
  }

  Backend& inner_;
  std::map<std::string, Entry> entries_;
};

}  // namespace repadapter
