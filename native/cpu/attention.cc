// Multi-head softmax attention, one (batch, head) pair per task.
//
// Each task works on strided views of the fused qkv activation [B,N,3,H,Dh]: q, k and v of head
// h are N×Dh matrices with leading dimension 3D, so nothing is gathered or transposed. The
// products are oneDNN gemms that run single-threaded inside the OpenMP loop over (b, h); the
// score matrix of one head (N×N) stays in cache between its two products.
//
// Two compute dtypes (the model's; DType in core/backend.h):
//
// kF32: float32 throughout. With s the N×N scores of one (sample, head) and p = softmax(s):
//   forward   s = scale · q kᵀ,  p = e · (1/ℓ) with e = exp(s − rowmax s), ℓ = rowsum e,
//             out = p v
//   backward  dV = pᵀ dO,  dP = dO vᵀ,  D = rowsum(dP ⊙ p),  dS = p ⊙ (dP − D),
//             dQ = scale · dS k,  dK = scale · dSᵀ q
//
// kBF16: attention as PyTorch's bf16 autocast runs it (FlashAttention-2): every operand of a
// product is rounded to bf16 — x̂ = x rounded to nearest even (core/bf16.h) — and every sum, the
// softmax and the outputs stay float32:
//   forward   s = scale · (q̂ k̂ᵀ),  m = rowmax s,  e = exp(s − m),  ℓ = rowsum e (of the
//             unrounded e),  out_i = (Σ_j bf16(e_ij) · v̂_j) / ℓ_i
//   backward  dÔ = bf16(dO),  dV = bf16(p)ᵀ dÔ,  dP = dÔ v̂ᵀ,  D = rowsum(dP ⊙ p),
//             dS = p ⊙ (dP − D),  dQ = scale · bf16(dS) k̂,  dK = scale · bf16(dS)ᵀ q̂
// where p = e · (1/ℓ) is what forward saves in both dtypes (float32, unrounded). Because ℓ sums
// the unrounded e, out's weights bf16(e)/ℓ need not sum to exactly 1; that is FlashAttention's
// definition too (its ℓ accumulates the float32 e, the product takes the rounded one). D in
// exact arithmetic is rowsum(dÔ ⊙ out), the form the fused CUDA kernels use.
//
// The bf16 products multiply float32 copies of the rounded operands with the same gemms and
// loops as kF32 (exact: a bf16 × bf16 product fits a float32), so the two dtypes differ by those
// roundings only, and kF32 is the code it always was.
#include <algorithm>
#include <cmath>
#include <vector>

#include "../core/bf16.h"
#include "cpu_backend.h"
#include "vmath.h"

namespace repadapter {
namespace {

inline float round_bf16(float x) { return bf16_to_float(bf16_from_float(x)); }

// dst [rows, cols] (dense) = src (rows ld apart) rounded to bf16.
void round_rows(const float* src, int64_t ld, int64_t rows, int64_t cols, float* dst) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) dst[r * cols + c] = round_bf16(src[r * ld + c]);
}

// Row-wise softmax in place over an N×N block. With `rounded`, also the bf16 forward's pieces:
// rounded = bf16(e) and sums = ℓ per row, from the same e as the probabilities.
RA_VECTOR_CLONES void softmax_rows(float* s, int64_t N, float* rounded = nullptr,
                                   float* sums = nullptr) {
  for (int64_t i = 0; i < N; ++i) {
    float* row = s + i * N;
    float mx = row[0];
#pragma omp simd reduction(max : mx)
    for (int64_t j = 1; j < N; ++j) mx = std::max(mx, row[j]);
    float sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < N; ++j) {
      row[j] = vmath::exp(row[j] - mx);
      sum += row[j];
    }
    if (rounded) {
      for (int64_t j = 0; j < N; ++j) rounded[i * N + j] = round_bf16(row[j]);
      sums[i] = sum;
    }
    const float inv = 1.0f / sum;
    for (int64_t j = 0; j < N; ++j) row[j] *= inv;
  }
}

// ds = p ⊙ (dp − rowsum(dp ⊙ p)), in place over dp.
RA_VECTOR_CLONES void softmax_backward_rows(const float* p, float* d, int64_t N) {
  for (int64_t i = 0; i < N; ++i) {
    const float* pr = p + i * N;
    float* dr = d + i * N;
    float dot = 0;
#pragma omp simd reduction(+ : dot)
    for (int64_t j = 0; j < N; ++j) dot += dr[j] * pr[j];
    for (int64_t j = 0; j < N; ++j) dr[j] = pr[j] * (dr[j] - dot);
  }
}

// Below this many tokens a head's products are too small for a gemm call to pay for itself
// (oneDNN's per-call cost exceeds the arithmetic); plain loops over rows of q, k, v do them.
constexpr int64_t kSmallTokens = 64;

// The matrices of one head's products: q, k, v (and d_out in backward) as row views — into qkv
// and d_out themselves in float32, into dense bf16-rounded copies in bf16 compute.
struct HeadInputs {
  const float *q, *k, *v;
  int64_t ld;
  const float* dout = nullptr;
  int64_t ldo = 0;
};

// dst [rows, cols] (dense) = src (rows ld apart), bf16 widened.
void widen_rows(const uint16_t* src, int64_t ld, int64_t rows, int64_t cols, float* dst) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) dst[r * cols + c] = bf16_to_float(src[r * ld + c]);
}

// A head's inputs for `compute`, from element `offset` of qkv (stored in the compute dtype);
// the bf16 operands go to `rounded` ([4][N][Dh] with d_out) as float32 copies.
HeadInputs head_inputs(const void* qkv, int64_t offset, int64_t ld, const float* dout,
                       int64_t ldo, int64_t D, int64_t N, int64_t Dh, DType compute,
                       std::vector<float>* rounded) {
  if (compute != DType::kBF16) {
    const float* q = static_cast<const float*>(qkv) + offset;
    return {q, q + D, q + 2 * D, ld, dout, ldo};
  }
  const uint16_t* q = static_cast<const uint16_t*>(qkv) + offset;
  const int64_t n = N * Dh;
  if (static_cast<int64_t>(rounded->size()) < 4 * n) rounded->resize(4 * n);
  float* r = rounded->data();
  widen_rows(q, ld, N, Dh, r);
  widen_rows(q + D, ld, N, Dh, r + n);
  widen_rows(q + 2 * D, ld, N, Dh, r + 2 * n);
  HeadInputs in{r, r + n, r + 2 * n, Dh, nullptr, 0};
  if (dout) {
    round_rows(dout, ldo, N, Dh, r + 3 * n);
    in.dout = r + 3 * n;
    in.ldo = Dh;
  }
  return in;
}

// ---- the products, each as a gemm (large N) or a loop (small N) ------------------------------

// s = scale · q kᵀ                                                   [N, N]
RA_VECTOR_CLONES void small_scores(const float* q, const float* k, int64_t ld, float* s,
                                   int64_t N, int64_t Dh, float scale) {
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = 0; j < N; ++j) {
      float dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int64_t d = 0; d < Dh; ++d) dot += q[i * ld + d] * k[j * ld + d];
      s[i * N + j] = scale * dot;
    }
}
Status scores(CpuBackend& be, const HeadInputs& in, float* s, int64_t N, int64_t Dh,
              float scale) {
  if (N <= kSmallTokens) {
    small_scores(in.q, in.k, in.ld, s, N, Dh, scale);
    return Status::Ok();
  }
  Gemm g;
  g.M = N; g.N = N; g.K = Dh; g.trans_b = true;
  g.A = in.q; g.lda = in.ld; g.B = in.k; g.ldb = in.ld;
  g.C = s; g.ldc = N; g.alpha = scale;
  return be.gemm(g);
}

// out = w v, w the N×N weights of the rows (p, or bf16(e))          [N, Dh], rows ldo apart
RA_VECTOR_CLONES void small_mix(const float* w, const float* v, int64_t ld, float* out,
                                int64_t ldo, int64_t N, int64_t Dh) {
  for (int64_t i = 0; i < N; ++i) {
    float* o = out + i * ldo;
    for (int64_t d = 0; d < Dh; ++d) o[d] = 0;
    for (int64_t j = 0; j < N; ++j) {
      const float p = w[i * N + j];
      const float* vj = v + j * ld;
#pragma omp simd
      for (int64_t d = 0; d < Dh; ++d) o[d] += p * vj[d];
    }
  }
}
Status mix(CpuBackend& be, const float* w, const HeadInputs& in, float* out, int64_t ldo,
           int64_t N, int64_t Dh) {
  if (N <= kSmallTokens) {
    small_mix(w, in.v, in.ld, out, ldo, N, Dh);
    return Status::Ok();
  }
  Gemm g;
  g.M = N; g.N = Dh; g.K = N;
  g.A = w; g.lda = N; g.B = in.v; g.ldb = in.ld;
  g.C = out; g.ldc = ldo;
  return be.gemm(g);
}

// dv = wᵀ dO (w: p, or bf16(p)) and dp = dO vᵀ                   dv [N, Dh] rows ldg apart; dp [N, N]
RA_VECTOR_CLONES void small_value_grads(const float* w, const float* dout, int64_t ldo,
                                        const float* v, int64_t ld, float* dv, int64_t ldg,
                                        float* dp, int64_t N, int64_t Dh) {
  for (int64_t j = 0; j < N; ++j)
    for (int64_t d = 0; d < Dh; ++d) dv[j * ldg + d] = 0;
  for (int64_t i = 0; i < N; ++i) {
    const float* g = dout + i * ldo;
    for (int64_t j = 0; j < N; ++j) {
      const float pij = w[i * N + j];
      const float* vj = v + j * ld;
      float* dvj = dv + j * ldg;
      float dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int64_t d = 0; d < Dh; ++d) {
        dvj[d] += pij * g[d];  // dv = pᵀ do
        dot += g[d] * vj[d];   // dp = do vᵀ
      }
      dp[i * N + j] = dot;
    }
  }
}
Status value_grads(CpuBackend& be, const float* w, const HeadInputs& in, float* dv, int64_t ldg,
                   float* dp, int64_t N, int64_t Dh) {
  if (N <= kSmallTokens) {
    small_value_grads(w, in.dout, in.ldo, in.v, in.ld, dv, ldg, dp, N, Dh);
    return Status::Ok();
  }
  Gemm g1;  // dv = wᵀ do                        [N, Dh]
  g1.trans_a = true; g1.M = N; g1.N = Dh; g1.K = N;
  g1.A = w; g1.lda = N; g1.B = in.dout; g1.ldb = in.ldo; g1.C = dv; g1.ldc = ldg;
  Status st = be.gemm(g1);
  Gemm g2;  // dp = do vᵀ                        [N, N]
  g2.trans_b = true; g2.M = N; g2.N = N; g2.K = Dh;
  g2.A = in.dout; g2.lda = in.ldo; g2.B = in.v; g2.ldb = in.ld; g2.C = dp; g2.ldc = N;
  if (st.ok()) st = be.gemm(g2);
  return st;
}

// dq = scale · ds k and dk = scale · dsᵀ q                        [N, Dh] each, rows ldg apart
RA_VECTOR_CLONES void small_query_key_grads(const float* ds, const float* q, const float* k,
                                            int64_t ld, float* dq, float* dk, int64_t ldg,
                                            int64_t N, int64_t Dh, float scale) {
  for (int64_t j = 0; j < N; ++j)
    for (int64_t d = 0; d < Dh; ++d) dq[j * ldg + d] = dk[j * ldg + d] = 0;
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = 0; j < N; ++j) {
      const float w = scale * ds[i * N + j];
      const float* kj = k + j * ld;
      const float* qi = q + i * ld;
      float* dqi = dq + i * ldg;
      float* dkj = dk + j * ldg;
#pragma omp simd
      for (int64_t d = 0; d < Dh; ++d) {
        dqi[d] += w * kj[d];  // dq = scale·ds k
        dkj[d] += w * qi[d];  // dk = scale·dsᵀ q
      }
    }
}
Status query_key_grads(CpuBackend& be, const float* ds, const HeadInputs& in, float* dq,
                       float* dk, int64_t ldg, int64_t N, int64_t Dh, float scale) {
  if (N <= kSmallTokens) {
    small_query_key_grads(ds, in.q, in.k, in.ld, dq, dk, ldg, N, Dh, scale);
    return Status::Ok();
  }
  Gemm g3;  // dq = scale · ds k                  [N, Dh]
  g3.M = N; g3.N = Dh; g3.K = N; g3.alpha = scale;
  g3.A = ds; g3.lda = N; g3.B = in.k; g3.ldb = in.ld; g3.C = dq; g3.ldc = ldg;
  Status st = be.gemm(g3);
  Gemm g4;  // dk = scale · dsᵀ q                 [N, Dh]
  g4.trans_a = true; g4.M = N; g4.N = Dh; g4.K = N; g4.alpha = scale;
  g4.A = ds; g4.lda = N; g4.B = in.q; g4.ldb = in.ld; g4.C = dk; g4.ldc = ldg;
  if (st.ok()) st = be.gemm(g4);
  return st;
}

}  // namespace

Status CpuBackend::attention_forward(const void* qkv, float* out, uint16_t* out_bf16, float* probs,
                                     int64_t B, int64_t N, int64_t H, int64_t Dh, DType compute) {
  const int64_t D = H * Dh, ld = 3 * D;
  const float scale = 1.0f / std::sqrt(static_cast<float>(Dh));
  const bool bf16 = compute == DType::kBF16;
  RA_RETURN_IF_ERROR(one_output(out, out_bf16, bf16, "attention_forward: exactly one of out and (in bf16 compute) out_bf16"));
  Status status;
#pragma omp parallel
  {
    thread_local std::vector<float> local, rounded, weights, sums, head_out;
    if (!probs && static_cast<int64_t>(local.size()) < N * N) local.resize(N * N);
    if (bf16 && static_cast<int64_t>(weights.size()) < N * N) weights.resize(N * N);
    if (bf16 && static_cast<int64_t>(sums.size()) < N) sums.resize(N);
    // A bf16 out: each head's output in float32 first ([N, Dh]), then rounded into place.
    if (out_bf16 && static_cast<int64_t>(head_out.size()) < N * Dh) head_out.resize(N * Dh);
#pragma omp for collapse(2) schedule(dynamic)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h) {
        const HeadInputs in =
            head_inputs(qkv, b * N * ld + h * Dh, ld, nullptr, 0, D, N, Dh, compute, &rounded);
        float* s = probs ? probs + (b * H + h) * N * N : local.data();
        // [N, Dh], rows ldo apart: in out, or in the head's float32 output
        const int64_t ldo = out ? D : Dh;
        float* o = out ? out + b * N * D + h * Dh : head_out.data();
        Status st = scores(*this, in, s, N, Dh, scale);
        if (bf16) {
          softmax_rows(s, N, weights.data(), sums.data());
          if (st.ok()) st = mix(*this, weights.data(), in, o, ldo, N, Dh);  // Σ_j bf16(e_ij) v̂_j
          for (int64_t i = 0; i < N; ++i)
            for (int64_t d = 0; d < Dh; ++d) o[i * ldo + d] /= sums[i];
          if (out_bf16)
            for (int64_t i = 0; i < N; ++i)
              for (int64_t d = 0; d < Dh; ++d)
                out_bf16[b * N * D + i * D + h * Dh + d] = bf16_from_float(o[i * Dh + d]);
        } else {
          softmax_rows(s, N);
          if (st.ok()) st = mix(*this, s, in, o, D, N, Dh);
        }
        if (!st.ok()) {
#pragma omp critical
          status = st;
        }
      }
  }
  return status;
}

Status CpuBackend::attention_backward(const float* d_out, const void* qkv, const float* probs,
                                      float* d_qkv, uint16_t* d_qkv_bf16, int64_t B, int64_t N,
                                      int64_t H, int64_t Dh, DType compute) {
  const int64_t D = H * Dh, ld = 3 * D;
  const float scale = 1.0f / std::sqrt(static_cast<float>(Dh));
  const bool bf16 = compute == DType::kBF16;
  RA_RETURN_IF_ERROR(one_output(d_qkv, d_qkv_bf16, bf16, "attention_backward: exactly one of d_qkv and (in bf16 compute) d_qkv_bf16"));
  Status status;
#pragma omp parallel
  {
    thread_local std::vector<float> ds_local, rounded, p_rounded, head_grad;
    if (static_cast<int64_t>(ds_local.size()) < N * N) ds_local.resize(N * N);
    if (bf16 && static_cast<int64_t>(p_rounded.size()) < N * N) p_rounded.resize(N * N);
    // A bf16 d_qkv: each head's gradient in float32 first ([N, 3, Dh]), then rounded into place.
    if (d_qkv_bf16 && static_cast<int64_t>(head_grad.size()) < N * 3 * Dh) head_grad.resize(N * 3 * Dh);
#pragma omp for collapse(2) schedule(dynamic)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h) {
        const int64_t offset = b * N * ld + h * Dh;
        const HeadInputs in = head_inputs(qkv, offset, ld, d_out + b * N * D + h * Dh, D, D, N,
                                          Dh, compute, &rounded);
        // dq, dk, dv: [N, Dh], rows ldg apart (in d_qkv, or in the head's float32 gradient)
        const int64_t ldg = d_qkv ? ld : 3 * Dh;
        float* dq = d_qkv ? d_qkv + offset : head_grad.data();
        float* dk = dq + (d_qkv ? D : Dh);
        float* dv = dq + (d_qkv ? 2 * D : 2 * Dh);
        const float* p = probs + (b * H + h) * N * N;
        float* ds = ds_local.data();
        const float* p_dv = p;  // dv's operand: p, or bf16(p)
        if (bf16) {
          round_rows(p, N, N, N, p_rounded.data());
          p_dv = p_rounded.data();
        }
        Status st = value_grads(*this, p_dv, in, dv, ldg, ds, N, Dh);
        softmax_backward_rows(p, ds, N);
        if (bf16)
          for (int64_t i = 0; i < N * N; ++i) ds[i] = round_bf16(ds[i]);
        if (st.ok()) st = query_key_grads(*this, ds, in, dq, dk, ldg, N, Dh, scale);
        if (d_qkv_bf16)
          for (int64_t i = 0; i < N; ++i)
            for (int64_t part = 0; part < 3; ++part)
              for (int64_t d = 0; d < Dh; ++d)
                d_qkv_bf16[offset + i * ld + part * D + d] = bf16_from_float(head_grad[(i * 3 + part) * Dh + d]);
        if (!st.ok()) {
#pragma omp critical
          status = st;
        }
      }
  }
  return status;
}

}  // namespace repadapter
