// The Backend interface: every op the ViT needs, forward and backward, over raw pointers that
// live in the backend's own memory. The model (native/model) is composed once over this
// interface; native/cpu is the reference implementation and native/cuda mirrors it op for op.
//
// Dimension letters, used in every shape comment of the project:
//   B batch          N tokens (1 + P)      P patches         D width
//   H heads          Dh head width (D/H)   F MLP hidden      C classes
//   R adapter width  G adapter groups      M rows (B·N or B·P, said where used)
//   Q patch vector length (3·p·p)
//
// Gradient conventions: gradients of parameters ACCUMULATE (+=) so that gradient accumulation
// and zero_grad() work as in PyTorch; gradients of activations OVERWRITE unless the op says it
// adds. A null gradient pointer means "not wanted" (a frozen parameter).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "status.h"

namespace repadapter {

enum class DType : int { kF32 = 0, kBF16 = 1 };
enum class Device : int { kCPU = 0, kCUDA = 1 };

// C[b] = alpha · op(A[b]) · op(B[b]) + beta · C[b] + bias, for b < batch; row-major.
// op(A) is M×K (stored K×M when trans_a), op(B) is K×N (stored N×K when trans_b); bias has N
// entries broadcast over rows. A Linear y = x Wᵀ + c is {trans_b = true, B = W, bias = c}.
struct Gemm {
  bool trans_a = false, trans_b = false;
  int64_t M = 0, N = 0, K = 0, batch = 1;
  const float* A = nullptr; int64_t lda = 0, stride_a = 0;
  const float* B = nullptr; int64_t ldb = 0, stride_b = 0;
  float* C = nullptr;       int64_t ldc = 0, stride_c = 0;
  const float* bias = nullptr;
  float alpha = 1.0f, beta = 0.0f;
  // bf16 compute: when set, B_bf16 replaces B (same layout and strides, bfloat16 bit patterns);
  // A is then rounded to bf16 as well and the products accumulate in float32 — a bf16 GEMM as
  // oneDNN's bf16 matmul and cuBLASLt's bf16 GEMM with 32F compute define it. C stays float32.
  const uint16_t* B_bf16 = nullptr;
  // bf16 activations, with B_bf16 and batch = 1 only: A_bf16 replaces A (already bf16, same
  // layout), and C_bf16 replaces C (the float32 result, bias included, rounded to bf16; beta 0).
  const uint16_t* A_bf16 = nullptr;
  uint16_t* C_bf16 = nullptr;
};

// What every backend's gemm requires of the bf16 activation operands above.
inline Status check_bf16_activations(const Gemm& g) {
  if ((g.A_bf16 || g.C_bf16) && !(g.B_bf16 && g.batch == 1 && (!g.C_bf16 || g.beta == 0.0f)))
    return InvalidArgument("gemm: bf16 A or C needs bf16 B, batch 1 and (for C) beta 0");
  return Status::Ok();
}

// An op that can hand an output over in bf16 takes it through one of two pointers: exactly one
// given, the bf16 one only where allowed (bf16 compute). Every backend checks it so.
inline Status one_output(const void* f32, const void* bf16, bool bf16_allowed, const char* what) {
  if ((f32 == nullptr) == (bf16 == nullptr) || (bf16 && !bf16_allowed))
    return InvalidArgument(std::string(what));
  return Status::Ok();
}

// A slice of the flat parameter / gradient / state buffers that an optimizer step updates with
// its own learning rate and weight decay (a parameter group, or part of one). Offsets and sizes
// count floats.
struct UpdateRange {
  int64_t offset = 0, n = 0;
  float lr = 1e-3f, weight_decay = 0.0f;
};

// One optimizer step's hyperparameters shared by every range. `step` counts from 1 (Adam's bias
// correction); grad_scale multiplies the raw gradient first (clipping by global norm, averaging
// accumulated micro-batches).
struct AdamWStep {
  double beta1 = 0.9, beta2 = 0.999;  // double: 1 − β is formed before rounding, as in torch
  float eps = 1e-8f;
  int64_t step = 1;
  float grad_scale = 1.0f;
};
struct SgdStep {
  float momentum = 0.0f, dampening = 0.0f;
  bool nesterov = false;
  bool first = true;  // the momentum buffer starts as the first gradient (torch.optim.SGD)
  float grad_scale = 1.0f;
};

// ---- what the optimizer ops read from backend memory ---------------------------------------------
// Every value that changes from one training step to the next (the learning rates of a schedule,
// Adam's bias corrections, the gradient scale, the dropout key) is read by the ops from backend
// memory, where the host writes it before the step: so a recorded step (a CUDA graph) replays
// with the current values instead of the ones it was recorded with. The host derives them once,
// in double where torch derives them in Python (optimizer_step.h), for every backend alike.

// One range of an update: `start` in the concatenation of all ranges, `offset` in the flat
// buffers, and two per-range scalars — AdamW: a = lr / (1 − β1ᵗ) (the step size), b = 1 − lr·wd
// (the decoupled decay factor); SGD: a = lr, b = wd.
struct UpdateJob {
  int64_t start = 0, offset = 0, n = 0;
  float a = 0.0f, b = 0.0f;
};
// The scalars every range shares. w1 = 1 − β1 and w2 = 1 − β2 are rounded once from double.
struct AdamWScalars {
  float w1 = 0, b2 = 0, w2 = 0, eps = 0, bias2_sqrt = 1, grad_scale = 1;
};
struct SgdScalars {
  float momentum = 0, dampening = 0, grad_scale = 1;
  int32_t nesterov = 0, first = 1;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  virtual const char* name() const = 0;

  // ---- memory ---------------------------------------------------------------------------
  virtual Status allocate(size_t bytes, void** out) = 0;
  virtual void release(void* ptr) = 0;
  virtual Status upload(void* dst, const void* host_src, size_t bytes) = 0;
  virtual Status download(void* host_dst, const void* src, size_t bytes) = 0;
  virtual Status copy(void* dst, const void* src, size_t bytes) = 0;
  virtual Status fill(float* x, int64_t n, float value) = 0;
  virtual Status synchronize() = 0;

  // ---- matrix products (cpu/gemm.cc) ------------------------------------------------------
  virtual Status gemm(const Gemm& g) = 0;
  // y[i] = x[i] rounded to bfloat16, to nearest even (the bit patterns; NaN stays NaN).
  virtual Status convert_to_bf16(const float* x, uint16_t* y, int64_t n) = 0;
  // True when bf16 GEMMs run on bf16 hardware; false when they are emulated (float32 products
  // of bf16-rounded operands: the same numbers up to summation order, without the speed-up).
  virtual bool bf16_native() const = 0;
  // db[N] += Σ_m dy[m, n]: the bias gradient of a Linear. dy: [M, N].
  virtual Status bias_backward(const float* dy, float* db, int64_t M, int64_t N) = 0;

  // ---- patch embedding and tokens (cpu/embed.cc) -----------------------------------------
  // images [B,3,S,S] → patches [B·P, Q], Q ordered (channel, row, column) like the conv weight.
  virtual Status patchify(const float* images, float* patches, int64_t B, int64_t image_size,
                          int64_t patch) = 0;
  // d_images [B,3,S,S] = the transpose of patchify applied to d_patches [B·P, Q] (overwrites).
  virtual Status patchify_backward(const float* d_patches, float* d_images, int64_t B,
                                   int64_t image_size, int64_t patch) = 0;
  // x [B,N,D]: x[b,0] = cls + pos[0]; x[b,1+p] = embedded[b·P+p] + pos[1+p].
  virtual Status tokens_forward(const float* embedded, const float* cls, const float* pos,
                                float* x, int64_t B, int64_t P, int64_t D) = 0;
  // d_embedded [B·P, D] = dx[:,1:] (overwrites); d_cls += Σ_b dx[b,0]; d_pos += Σ_b dx[b].
  virtual Status tokens_backward(const float* dx, float* d_embedded, float* d_cls, float* d_pos,
                                 int64_t B, int64_t P, int64_t D) = 0;

  // ---- LayerNorm (cpu/layernorm.cc); rows of x and y may be strided (ld ≥ D) ----------------
  // y = (x − mean) · rstd · w + b per row; mean, rstd: [M] kept for backward (may be null).
  // y_bf16 may replace y (then null): y rounded to bf16, rows ldy apart, for a frozen bf16 Linear
  // that reads it (its product rounds its operand anyway).
  virtual Status layernorm_forward(const float* x, int64_t ldx, const float* w, const float* b,
                                   float* y, uint16_t* y_bf16, int64_t ldy, float* mean,
                                   float* rstd, int64_t M, int64_t D, float eps) = 0;
  // dx (stride ldx) ADDS the input gradient: LayerNorm always reads a residual stream, whose
  // gradient already holds the skip path. dw, db accumulate.
  virtual Status layernorm_backward(const float* dy, int64_t ldy, const float* x, int64_t ldx,
                                    const float* w, const float* mean, const float* rstd,
                                    float* dx, float* dw, float* db, int64_t M, int64_t D) = 0;

  // ---- GELU, exact erf form (cpu/gelu.cc) ------------------------------------------------
  virtual Status gelu_forward(const float* x, float* y, int64_t n) = 0;
  // d holds dy on entry and dx on return; x is the GELU input.
  virtual Status gelu_backward(const float* x, float* d, int64_t n) = 0;
  // The same from a bf16 copy of the input (what bf16 compute keeps for backward): exactly
  // gelu_backward of the widened values.
  virtual Status gelu_backward_bf16(const uint16_t* x, float* d, int64_t n) = 0;
  // bf16 in and out, as autocast runs it: y = bf16(gelu_forward(widened x)); y may equal x.
  virtual Status gelu_forward_bf16(const uint16_t* x, uint16_t* y, int64_t n) = 0;
  // Its backward with bf16 gradients: dx = bf16(widened dy · gelu'(widened x)), exactly
  // gelu_backward_bf16 of the widened dy, rounded; dx may equal dy.
  virtual Status gelu_backward_bf16_grads(const uint16_t* x, const uint16_t* dy, uint16_t* dx,
                                          int64_t n) = 0;

  // ---- multi-head softmax attention, scale Dh^-0.5 (cpu/attention.cc) ----------------------
  // qkv [B,N,3,H,Dh] (the qkv Linear's output) → out [B,N,H,Dh]. `saved` keeps what backward
  // needs, attention_saved_floats(B, N, H, Dh, compute) floats in a backend-defined layout (the
  // CPU keeps the softmax [B,H,N,N]; a fused kernel may keep each row's log-sum-exp and the
  // output instead); null in inference. `compute` is the model's compute dtype: kF32 is float32
  // throughout; kBF16 is attention as PyTorch's bf16 autocast runs it (FlashAttention-2), per
  // (sample, head) with x̂ = x rounded to bf16 and every sum in float32:
  //   forward   s = scale · q̂ k̂ᵀ, e = exp(s − rowmax s), ℓ = rowsum e, out = (bf16(e) v̂) / ℓ
  //   backward  p = e / ℓ, dÔ = bf16(d_out), dV = bf16(p)ᵀ dÔ, dP = dÔ v̂ᵀ,
  //             dS = p ⊙ (dP − rowsum(dP ⊙ p)), dQ = scale · bf16(dS) k̂, dK = scale · bf16(dS)ᵀ q̂
  // (cpu/attention.cc defines it exactly; a fused kernel may round e against a running maximum,
  // and the difference it makes is documented with the kernel). qkv is stored in the compute
  // dtype: float32, or in kBF16 bf16 values (the qkv Linear's output rounded, Gemm::C_bf16) —
  // the operands the definition rounds anyway, at half the bytes. d_out is float32; out and d_qkv
  // are float32, or bf16 in the places described below.
  virtual int64_t attention_saved_floats(int64_t B, int64_t N, int64_t H, int64_t Dh,
                                         DType compute) const = 0;
  // In kBF16, out_bf16 may replace out (then null): out rounded to bf16, for a frozen proj
  // Linear, whose product rounds its operand to bf16 anyway.
  virtual Status attention_forward(const void* qkv, float* out, uint16_t* out_bf16, float* saved,
                                   int64_t B, int64_t N, int64_t H, int64_t Dh,
                                   DType compute) = 0;
  // d_qkv [B,N,3D] from d_out [B,N,D] (overwrites). In kBF16, d_qkv_bf16 may replace d_qkv
  // (then null): the same gradient rounded to bf16, for a frozen qkv Linear, whose input-gradient
  // product rounds its operand to bf16 anyway — half the bytes, and no rounding copy there.
  virtual Status attention_backward(const float* d_out, const void* qkv, const float* saved,
                                    float* d_qkv, uint16_t* d_qkv_bf16, int64_t B, int64_t N,
                                    int64_t H, int64_t Dh, DType compute) = 0;

  // ---- RepAdapter pieces (cpu/adapter.cc); the dense down-projection is a gemm -------------
  // Inverted dropout on z [n] in place; the mask is uniform01(seed, *step_key ^ site, i) >= p.
  // step_key (one value in backend memory) changes every training step, so the masks do; site
  // tells the dropouts of one step apart.
  virtual Status dropout_forward(float* z, int64_t n, float p, uint64_t seed,
                                 const uint64_t* step_key, uint64_t site) = 0;
  // The same mask applied to the gradient, in place.
  virtual Status dropout_backward(float* dz, int64_t n, float p, uint64_t seed,
                                  const uint64_t* step_key, uint64_t site) = 0;
  // Group-sparse up-projection with the skip: y = x + s · (B̂ z + b).
  // x, y: [M, D]; z: [M, R]; w (conv_B): [D, R/G]; b: [D]. Output group k (columns
  // k·D/G … (k+1)·D/G) reads z columns k·R/G … (k+1)·R/G only. x may equal y.
  virtual Status adapter_up_forward(const float* x, const float* z, const float* w,
                                    const float* b, float* y, int64_t M, int64_t D, int64_t R,
                                    int64_t G, float scale) = 0;
  // From dy [M, D]: dz [M, R] = s · (B̂ᵀ dy) (overwrites); dw += s · B̂-blocks of dyᵀ z;
  // db += s · Σ_m dy. The skip's gradient (dx = dy) is left to the caller.
  virtual Status adapter_up_backward(const float* dy, const float* z, const float* w, float* dz,
                                     float* dw, float* db, int64_t M, int64_t D, int64_t R,
                                     int64_t G, float scale) = 0;
  // LayerNorm and the RepAdapter that reads it, in one pass per row (forward only; backward is
  // layernorm_backward and the adapter ops above):
  //   a = LN(x; ln_w, ln_b, eps),  z = dropout(A a + a_bias),  u = a + s · (B̂ z + up_b),
  // exactly layernorm_forward, the down-projection gemm, dropout_forward (mask
  // uniform01(seed, *step_key ^ site, i) ≥ p on z's flat index i = m·R + r; p = 0: no dropout,
  // and step_key may be null) and adapter_up_forward composed, up to float rounding.
  // x: [M, D] with rows ldx apart; A (conv_A): [R, D]; a_bias: [R]; up_w (conv_B): [D, R/G];
  // up_b: [D]. Outputs: u [M, D] (or u_bf16 in its place: u rounded to bf16, for a frozen bf16
  // Linear that reads it); z [M, R]; a [M, D], mean [M], rstd [M] only where given (what
  // backward reads), else null. No output may alias x.
  virtual Status layernorm_adapter_forward(const float* x, int64_t ldx, const float* ln_w,
                                           const float* ln_b, float eps, const float* A,
                                           const float* a_bias, const float* up_w,
                                           const float* up_b, float scale, float p,
                                           uint64_t seed, const uint64_t* step_key,
                                           uint64_t site, float* a, float* z, float* u,
                                           uint16_t* u_bf16, float* mean, float* rstd, int64_t M,
                                           int64_t D, int64_t R, int64_t G) = 0;
  // Structural re-parameterisation into the Linear (W [O, D], c [O]) that reads the adapter:
  //   W ← W + s · (W B̂) A,   c ← c + s · W (B̂ a + b)      (low rank, no D×D matrix)
  // A (conv_A): [R, D]; a: [R]; w (conv_B): [D, R/G]; b: [D].
  virtual Status adapter_fold(float* W, float* c, const float* A, const float* a,
                              const float* w, const float* b, int64_t O, int64_t D, int64_t R,
                              int64_t G, float scale) = 0;

  // ---- residual stream with stochastic depth (cpu/residual.cc) ----------------------------
  // y[b] = x[b] + keep_scale[b] · branch[b] over rows of `row` elements; keep_scale [B] (0 for
  // a dropped sample, 1/keep otherwise); null means all ones. y may equal x (in place); a y of
  // its own spares a copy of the stream where backward keeps both.
  virtual Status residual_add(float* y, const float* x, const float* branch,
                              const float* keep_scale, int64_t B, int64_t row) = 0;
  // d_branch[b] = keep_scale[b] · dx[b] (overwrites). d_branch_bf16 may replace d_branch (then
  // null): the same rounded to bf16, for a frozen bf16 Linear that reads it.
  virtual Status residual_backward(const float* dx, float* d_branch, uint16_t* d_branch_bf16,
                                   const float* keep_scale, int64_t B, int64_t row) = 0;

  // ---- loss (cpu/loss.cc) -----------------------------------------------------------------
  // Mean softmax cross-entropy over B rows of logits [B, C], against integer labels [B] with
  // label smoothing ε (loss = (1−ε)·nll + ε·mean_c(−log p_c)), or against soft targets [B, C]
  // (exactly one of labels / soft_targets is non-null). loss: one float in backend memory;
  // d_logits [B, C] (overwrites; may be null) is the gradient of that mean.
  virtual Status cross_entropy(const float* logits, const int32_t* labels,
                               const float* soft_targets, float smoothing, float* loss,
                               float* d_logits, int64_t B, int64_t C) = 0;

  // ---- optimizer updates: one fused pass over every range of the flat buffers, each range
  // with its own lr and weight decay; ranges must not overlap (cpu/optimizer.cc) ----------------
  // `jobs` (count of them, Σ n = total) and the scalars lie in backend memory (see UpdateJob);
  // g = grad · grad_scale first.
  // AdamW exactly as torch.optim.AdamW: p ← p·(1 − lr·wd); m ← β1·m + (1−β1)·g;
  // v ← β2·v + (1−β2)·g²; p ← p − lr·(m/(1−β1ᵗ)) / (√(v/(1−β2ᵗ)) + eps).
  virtual Status adamw_update(float* param, const float* grad, float* m, float* v,
                              const UpdateJob* jobs, int64_t count, int64_t total,
                              const AdamWScalars* s) = 0;
  // SGD exactly as torch.optim.SGD: g ← g + wd·p; buf ← momentum·buf + (1−dampening)·g (buf ← g
  // on the first step); g ← nesterov ? g + momentum·buf : buf; p ← p − lr·g. buf may be null
  // without momentum.
  virtual Status sgd_update(float* param, const float* grad, float* buf, const UpdateJob* jobs,
                            int64_t count, int64_t total, const SgdScalars* s) = 0;
  // Σ x² in float64, written to one double in backend memory (the global gradient norm²).
  virtual Status sum_squares(const float* x, int64_t n, double* out) = 0;
  // Clipping by global norm without a trip to the host: with norm = √sum_squares · pre_scale,
  //   *grad_scale = pre_scale · min(1, max_norm / (norm + 1e-6))
  // (torch's clip_grad_norm_ on gradients scaled by pre_scale), rounded once to float.
  // sum_squares and grad_scale lie in backend memory.
  virtual Status clip_grad_scale(const double* sum_squares, double pre_scale, double max_norm,
                                 float* grad_scale) = 0;

  // ---- recorded graphs (CUDA graphs); optional ------------------------------------------------
  // Between begin_capture and end_capture the backend records the ops it is given instead of
  // running them; replay runs the recording, with the pointers and scalars it was made with.
  // Every buffer the ops use (the backend's scratch too) must already exist, and no op may wait
  // for the device or copy from host memory while recording. end_capture always ends the
  // recording, also after a failed op. Backends without graphs answer Unavailable. replay also
  // answers Unavailable for a recording whose buffers the backend has since moved (its scratch
  // grew): the caller drops it and records again.
  virtual Status begin_capture() { return Unavailable(std::string(name()) + " records no graphs"); }
  virtual Status end_capture(void** graph) {
    *graph = nullptr;
    return Unavailable(std::string(name()) + " records no graphs");
  }
  virtual Status replay(void* /*graph*/) { return Unavailable(std::string(name()) + " records no graphs"); }
  virtual void release_graph(void* /*graph*/) {}
};

}  // namespace repadapter
