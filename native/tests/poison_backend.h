// A Backend that forwards every op to another one, but first fills each output the op is
// documented to OVERWRITE (backend.h) with NaN. An op that leaves part of its output unwritten
// then shows NaN there instead of whatever the buffer held before (zeros from op_checks'
// buffers, or the right answer from an earlier op), and the checks fail on it.
//
// Outputs that accumulate (+=) or that an op updates in place are left alone, and so is an
// output that aliases an input (adapter_up_forward with x == y).
#pragma once
#include <cstring>
#include <limits>
#include <vector>

#include "../core/backend.h"

namespace repadapter {

class PoisonBackend final : public Backend {
 public:
  explicit PoisonBackend(Backend& inner) : inner_(inner) {}
  Backend& inner() { return inner_; }
  // Number of fills done, to show the poisoning ran.
  int64_t poisoned() const { return poisoned_; }

  Device device() const override { return inner_.device(); }
  const char* name() const override { return inner_.name(); }

  Status allocate(size_t bytes, void** out) override { return inner_.allocate(bytes, out); }
  void release(void* ptr) override { inner_.release(ptr); }
  Status upload(void* d, const void* s, size_t n) override { return inner_.upload(d, s, n); }
  Status download(void* d, const void* s, size_t n) override { return inner_.download(d, s, n); }
  Status copy(void* d, const void* s, size_t n) override { return inner_.copy(d, s, n); }
  Status fill(float* x, int64_t n, float v) override { return inner_.fill(x, n, v); }
  Status synchronize() override { return inner_.synchronize(); }

  Status gemm(const Gemm& g) override {
    // beta = 0: C is overwritten (rows of N values, ldc apart, batch entries stride_c apart).
    if (g.beta == 0.0f && g.C)
      for (int64_t b = 0; b < g.batch; ++b) RA_RETURN_IF_ERROR(poison_rows(g.C + b * g.stride_c, g.M, g.N, g.ldc));
    if (g.C_bf16) {  // batch 1; dense rows in one fill
      if (g.ldc == g.N) RA_RETURN_IF_ERROR(poison_bf16(g.C_bf16, g.M * g.N));
      else for (int64_t m = 0; m < g.M; ++m) RA_RETURN_IF_ERROR(poison_bf16(g.C_bf16 + m * g.ldc, g.N));
    }
    return inner_.gemm(g);
  }
  // bf16 bit patterns are poisoned with a NaN pattern too (0x7FC0).
  Status convert_to_bf16(const float* x, uint16_t* y, int64_t n) override {
    RA_RETURN_IF_ERROR(poison_bf16(y, n));
    return inner_.convert_to_bf16(x, y, n);
  }
  bool bf16_native() const override { return inner_.bf16_native(); }
  Status bias_backward(const float* dy, float* db, int64_t M, int64_t N) override {
    return inner_.bias_backward(dy, db, M, N);
  }

  Status patchify(const float* images, float* patches, int64_t B, int64_t S, int64_t p) override {
    RA_RETURN_IF_ERROR(poison(patches, B * (S / p) * (S / p) * 3 * p * p));
    return inner_.patchify(images, patches, B, S, p);
  }
  Status patchify_backward(const float* d_patches, float* d_images, int64_t B, int64_t S,
                           int64_t p) override {
    RA_RETURN_IF_ERROR(poison(d_images, B * 3 * S * S));
    return inner_.patchify_backward(d_patches, d_images, B, S, p);
  }
  Status tokens_forward(const float* e, const float* cls, const float* pos, float* x, int64_t B,
                        int64_t P, int64_t D) override {
    RA_RETURN_IF_ERROR(poison(x, B * (P + 1) * D));
    return inner_.tokens_forward(e, cls, pos, x, B, P, D);
  }
  Status tokens_backward(const float* dx, float* d_embedded, float* d_cls, float* d_pos,
                         int64_t B, int64_t P, int64_t D) override {
    if (d_embedded) RA_RETURN_IF_ERROR(poison(d_embedded, B * P * D));
    return inner_.tokens_backward(dx, d_embedded, d_cls, d_pos, B, P, D);
  }

  Status layernorm_forward(const float* x, int64_t ldx, const float* w, const float* b, float* y,
                           uint16_t* y_bf16, int64_t ldy, float* mean, float* rstd, int64_t M,
                           int64_t D, float eps) override {
    if (y) RA_RETURN_IF_ERROR(poison_rows(y, M, D, ldy));
    if (y_bf16 && ldy == D) RA_RETURN_IF_ERROR(poison_bf16(y_bf16, M * D));
    if (mean) RA_RETURN_IF_ERROR(poison(mean, M));
    if (rstd) RA_RETURN_IF_ERROR(poison(rstd, M));
    return inner_.layernorm_forward(x, ldx, w, b, y, y_bf16, ldy, mean, rstd, M, D, eps);
  }
  Status layernorm_backward(const float* dy, int64_t ldy, const float* x, int64_t ldx,
                            const float* w, const float* mean, const float* rstd, float* dx,
                            float* dw, float* db, int64_t M, int64_t D) override {
    return inner_.layernorm_backward(dy, ldy, x, ldx, w, mean, rstd, dx, dw, db, M, D);  // adds
  }

  Status gelu_forward(const float* x, float* y, int64_t n) override {
    if (y != x) RA_RETURN_IF_ERROR(poison(y, n));
    return inner_.gelu_forward(x, y, n);
  }
  Status gelu_backward(const float* x, float* d, int64_t n) override {
    return inner_.gelu_backward(x, d, n);  // in place
  }
  Status gelu_backward_bf16(const uint16_t* x, float* d, int64_t n) override {
    return inner_.gelu_backward_bf16(x, d, n);  // in place
  }
  Status gelu_forward_bf16(const uint16_t* x, uint16_t* y, int64_t n) override {
    if (y != x) RA_RETURN_IF_ERROR(poison_bf16(y, n));
    return inner_.gelu_forward_bf16(x, y, n);
  }
  Status gelu_backward_bf16_grads(const uint16_t* x, const uint16_t* dy, uint16_t* dx,
                                  int64_t n) override {
    if (dx != dy) RA_RETURN_IF_ERROR(poison_bf16(dx, n));
    return inner_.gelu_backward_bf16_grads(x, dy, dx, n);
  }

  int64_t attention_saved_floats(int64_t B, int64_t N, int64_t H, int64_t Dh,
                                 DType compute) const override {
    return inner_.attention_saved_floats(B, N, H, Dh, compute);
  }
  Status attention_forward(const void* qkv, float* out, uint16_t* out_bf16, float* saved,
                           int64_t B, int64_t N, int64_t H, int64_t Dh, DType compute) override {
    if (out) RA_RETURN_IF_ERROR(poison(out, B * N * H * Dh));
    if (out_bf16) RA_RETURN_IF_ERROR(poison_bf16(out_bf16, B * N * H * Dh));
    if (saved) RA_RETURN_IF_ERROR(poison(saved, attention_saved_floats(B, N, H, Dh, compute)));
    return inner_.attention_forward(qkv, out, out_bf16, saved, B, N, H, Dh, compute);
  }
  Status attention_backward(const float* d_out, const void* qkv, const float* saved,
                            float* d_qkv, uint16_t* d_qkv_bf16, int64_t B, int64_t N, int64_t H,
                            int64_t Dh, DType compute) override {
    if (d_qkv) RA_RETURN_IF_ERROR(poison(d_qkv, B * N * 3 * H * Dh));
    if (d_qkv_bf16) RA_RETURN_IF_ERROR(poison_bf16(d_qkv_bf16, B * N * 3 * H * Dh));
    return inner_.attention_backward(d_out, qkv, saved, d_qkv, d_qkv_bf16, B, N, H, Dh, compute);
  }

  Status dropout_forward(float* z, int64_t n, float p, uint64_t seed, const uint64_t* step_key,
                         uint64_t site) override {
    return inner_.dropout_forward(z, n, p, seed, step_key, site);  // in place
  }
  Status dropout_backward(float* dz, int64_t n, float p, uint64_t seed, const uint64_t* step_key,
                          uint64_t site) override {
    return inner_.dropout_backward(dz, n, p, seed, step_key, site);  // in place
  }
  Status adapter_up_forward(const float* x, const float* z, const float* w, const float* b,
                            float* y, int64_t M, int64_t D, int64_t R, int64_t G,
                            float scale) override {
    if (y != x) RA_RETURN_IF_ERROR(poison(y, M * D));
    return inner_.adapter_up_forward(x, z, w, b, y, M, D, R, G, scale);
  }
  Status adapter_up_backward(const float* dy, const float* z, const float* w, float* dz,
                             float* dw, float* db, int64_t M, int64_t D, int64_t R, int64_t G,
                             float scale) override {
    if (dz) RA_RETURN_IF_ERROR(poison(dz, M * R));
    return inner_.adapter_up_backward(dy, z, w, dz, dw, db, M, D, R, G, scale);
  }
  Status layernorm_adapter_forward(const float* x, int64_t ldx, const float* ln_w,
                                   const float* ln_b, float eps, const float* A,
                                   const float* a_bias, const float* up_w, const float* up_b,
                                   float scale, float p, uint64_t seed, const uint64_t* step_key,
                                   uint64_t site, float* a,
                                   float* z, float* u, uint16_t* u_bf16, float* mean, float* rstd,
                                   int64_t M, int64_t D, int64_t R, int64_t G) override {
    if (u) RA_RETURN_IF_ERROR(poison(u, M * D));
    if (u_bf16) RA_RETURN_IF_ERROR(poison_bf16(u_bf16, M * D));
    RA_RETURN_IF_ERROR(poison(z, M * R));
    if (a) RA_RETURN_IF_ERROR(poison(a, M * D));
    if (mean) RA_RETURN_IF_ERROR(poison(mean, M));
    if (rstd) RA_RETURN_IF_ERROR(poison(rstd, M));
    return inner_.layernorm_adapter_forward(x, ldx, ln_w, ln_b, eps, A, a_bias, up_w, up_b, scale,
                                            p, seed, step_key, site, a, z, u, u_bf16, mean, rstd, M,
                                            D, R, G);
  }
  Status adapter_fold(float* W, float* c, const float* A, const float* a, const float* w,
                      const float* b, int64_t O, int64_t D, int64_t R, int64_t G,
                      float scale) override {
    return inner_.adapter_fold(W, c, A, a, w, b, O, D, R, G, scale);  // in place
  }

  Status residual_add(float* y, const float* x, const float* branch, const float* keep,
                      int64_t B, int64_t row) override {
    if (y != x) RA_RETURN_IF_ERROR(poison(y, B * row));
    return inner_.residual_add(y, x, branch, keep, B, row);
  }
  Status residual_backward(const float* dx, float* d_branch, uint16_t* d_branch_bf16,
                           const float* keep, int64_t B, int64_t row) override {
    if (d_branch && d_branch != dx) RA_RETURN_IF_ERROR(poison(d_branch, B * row));
    if (d_branch_bf16) RA_RETURN_IF_ERROR(poison_bf16(d_branch_bf16, B * row));
    return inner_.residual_backward(dx, d_branch, d_branch_bf16, keep, B, row);
  }

  Status cross_entropy(const float* logits, const int32_t* labels, const float* soft,
                       float smoothing, float* loss, float* d_logits, int64_t B,
                       int64_t C) override {
    RA_RETURN_IF_ERROR(poison(loss, 1));
    if (d_logits) RA_RETURN_IF_ERROR(poison(d_logits, B * C));
    return inner_.cross_entropy(logits, labels, soft, smoothing, loss, d_logits, B, C);
  }

  Status adamw_update(float* param, const float* grad, float* m, float* v, const UpdateJob* jobs,
                      int64_t count, int64_t total, const AdamWScalars* s) override {
    return inner_.adamw_update(param, grad, m, v, jobs, count, total, s);  // in place
  }
  Status sgd_update(float* param, const float* grad, float* buf, const UpdateJob* jobs,
                    int64_t count, int64_t total, const SgdScalars* s) override {
    return inner_.sgd_update(param, grad, buf, jobs, count, total, s);  // in place
  }
  Status clip_grad_scale(const double* sum_squares, double pre_scale, double max_norm,
                         float* grad_scale) override {
    RA_RETURN_IF_ERROR(poison(grad_scale, 1));
    return inner_.clip_grad_scale(sum_squares, pre_scale, max_norm, grad_scale);
  }
  // Recordings include the poison fills, so a replay is checked like an eager run.
  Status begin_capture() override { return inner_.begin_capture(); }
  Status end_capture(void** graph) override { return inner_.end_capture(graph); }
  Status replay(void* graph) override { return inner_.replay(graph); }
  void release_graph(void* graph) override { inner_.release_graph(graph); }
  // The double is poisoned as two float NaNs, which read as a double of about 2e307: unwritten,
  // it fails any comparison just the same.
  Status sum_squares(const float* x, int64_t n, double* out) override {
    RA_RETURN_IF_ERROR(poison(reinterpret_cast<float*>(out), 2));
    return inner_.sum_squares(x, n, out);
  }

 private:
  Status poison(float* x, int64_t n) {
    if (!x || n <= 0) return Status::Ok();
    ++poisoned_;
    return inner_.fill(x, n, std::numeric_limits<float>::quiet_NaN());
  }
  Status poison_bf16(uint16_t* y, int64_t n) {
    if (!y || n <= 0) return Status::Ok();
    ++poisoned_;
    std::vector<uint16_t> nan(static_cast<size_t>(n), 0x7FC0);
    return inner_.upload(y, nan.data(), nan.size() * sizeof(uint16_t));
  }
  // rows × cols values, ld apart: one fill when contiguous, else one per row (gaps untouched).
  Status poison_rows(float* x, int64_t rows, int64_t cols, int64_t ld) {
    if (ld == cols) return poison(x, rows * cols);
    for (int64_t r = 0; r < rows; ++r) RA_RETURN_IF_ERROR(poison(x + r * ld, cols));
    return Status::Ok();
  }

  Backend& inner_;
  int64_t poisoned_ = 0;
};

}  // namespace repadapter
