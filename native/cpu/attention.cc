// Multi-head softmax attention, one (batch, head) pair per task.
//
// Each task works on strided views of the fused qkv activation [B,N,3,H,Dh]: q, k and v of head
// h are N×Dh matrices with leading dimension 3D, so nothing is gathered or transposed. The
// products are oneDNN gemms that run single-threaded inside the OpenMP loop over (b, h); the
// score matrix of one head (N×N) stays in cache between its two products.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu_backend.h"
#include "vmath.h"

namespace repadapter {
namespace {

// Row-wise softmax in place over an N×N block.
RA_VECTOR_CLONES void softmax_rows(float* s, int64_t N) {
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

// One head, small N: s = scale·q kᵀ, softmax, out = p v. q, k, v, out rows have stride ld / ldo.
RA_VECTOR_CLONES void small_head_forward(const float* q, const float* k, const float* v,
                                         int64_t ld, float* s, float* out, int64_t ldo,
                                         int64_t N, int64_t Dh, float scale) {
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = 0; j < N; ++j) {
      float dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int64_t d = 0; d < Dh; ++d) dot += q[i * ld + d] * k[j * ld + d];
      s[i * N + j] = scale * dot;
    }
  softmax_rows(s, N);
  for (int64_t i = 0; i < N; ++i) {
    float* o = out + i * ldo;
    for (int64_t d = 0; d < Dh; ++d) o[d] = 0;
    for (int64_t j = 0; j < N; ++j) {
      const float p = s[i * N + j];
      const float* vj = v + j * ld;
#pragma omp simd
      for (int64_t d = 0; d < Dh; ++d) o[d] += p * vj[d];
    }
  }
}

// One head, small N, backward: the same products as the gemm path, as loops.
RA_VECTOR_CLONES void small_head_backward(const float* q, const float* k, const float* v,
                                          int64_t ld, const float* p, const float* dout,
                                          int64_t ldo, float* ds, float* dq, float* dk,
                                          float* dv, int64_t N, int64_t Dh, float scale) {
  for (int64_t j = 0; j < N; ++j)
    for (int64_t d = 0; d < Dh; ++d) dq[j * ld + d] = dk[j * ld + d] = dv[j * ld + d] = 0;
  for (int64_t i = 0; i < N; ++i) {
    const float* g = dout + i * ldo;
    for (int64_t j = 0; j < N; ++j) {
      const float pij = p[i * N + j];
      const float* vj = v + j * ld;
      float* dvj = dv + j * ld;
      float dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int64_t d = 0; d < Dh; ++d) {
        dvj[d] += pij * g[d];  // dv = pᵀ do
        dot += g[d] * vj[d];   // dp = do vᵀ
      }
      ds[i * N + j] = dot;
    }
  }
  softmax_backward_rows(p, ds, N);
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = 0; j < N; ++j) {
      const float w = scale * ds[i * N + j];
      const float* kj = k + j * ld;
      const float* qi = q + i * ld;
      float* dqi = dq + i * ld;
      float* dkj = dk + j * ld;
#pragma omp simd
      for (int64_t d = 0; d < Dh; ++d) {
        dqi[d] += w * kj[d];  // dq = scale·ds k
        dkj[d] += w * qi[d];  // dk = scale·dsᵀ q
      }
    }
}

}  // namespace

Status CpuBackend::attention_forward(const float* qkv, float* out, float* probs, int64_t B,
                                     int64_t N, int64_t H, int64_t Dh, DType) {
  const int64_t D = H * Dh, ld = 3 * D;
  const float scale = 1.0f / std::sqrt(static_cast<float>(Dh));
  Status status;
#pragma omp parallel
  {
    thread_local std::vector<float> local;
    if (!probs && static_cast<int64_t>(local.size()) < N * N) local.resize(N * N);
#pragma omp for collapse(2) schedule(dynamic)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h) {
        const float* q = qkv + b * N * ld + h * Dh;
        const float* k = q + D;
        const float* v = q + 2 * D;
        float* s = probs ? probs + (b * H + h) * N * N : local.data();
        if (N <= kSmallTokens) {
          small_head_forward(q, k, v, ld, s, out + b * N * D + h * Dh, D, N, Dh, scale);
          continue;
        }
        Gemm scores;  // s = scale · q kᵀ            [N, N]
        scores.M = N; scores.N = N; scores.K = Dh; scores.trans_b = true;
        scores.A = q; scores.lda = ld; scores.B = k; scores.ldb = ld;
        scores.C = s; scores.ldc = N; scores.alpha = scale;
        Status st = gemm(scores);
        softmax_rows(s, N);
        Gemm mix;  // out_h = p v                     [N, Dh]
        mix.M = N; mix.N = Dh; mix.K = N;
        mix.A = s; mix.lda = N; mix.B = v; mix.ldb = ld;
        mix.C = out + b * N * D + h * Dh; mix.ldc = D;
        if (st.ok()) st = gemm(mix);
        if (!st.ok()) {
#pragma omp critical
          status = st;
        }
      }
  }
  return status;
}

// With p = softmax(s):  dv = pᵀ do,  dp = do vᵀ,  ds = p ⊙ (dp − rowsum(dp ⊙ p)),
// dq = scale · ds k,  dk = scale · dsᵀ q.
Status CpuBackend::attention_backward(const float* d_out, const float* qkv, const float* probs,
                                      float* d_qkv, int64_t B, int64_t N, int64_t H,
                                      int64_t Dh, DType) {
  const int64_t D = H * Dh, ld = 3 * D;
  const float scale = 1.0f / std::sqrt(static_cast<float>(Dh));
  Status status;
#pragma omp parallel
  {
    thread_local std::vector<float> ds_local;
    if (static_cast<int64_t>(ds_local.size()) < N * N) ds_local.resize(N * N);
#pragma omp for collapse(2) schedule(dynamic)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h) {
        const int64_t offset = b * N * ld + h * Dh;
        const float* q = qkv + offset;
        const float* k = q + D;
        const float* v = q + 2 * D;
        float* dq = d_qkv + offset;
        float* dk = dq + D;
        float* dv = dq + 2 * D;
        const float* p = probs + (b * H + h) * N * N;
        const float* dout = d_out + b * N * D + h * Dh;
        float* ds = ds_local.data();
        if (N <= kSmallTokens) {
          small_head_backward(q, k, v, ld, p, dout, D, ds, dq, dk, dv, N, Dh, scale);
          continue;
        }

        Gemm g1;  // dv = pᵀ do                        [N, Dh]
        g1.trans_a = true; g1.M = N; g1.N = Dh; g1.K = N;
        g1.A = p; g1.lda = N; g1.B = dout; g1.ldb = D; g1.C = dv; g1.ldc = ld;
        Status st = gemm(g1);
        Gemm g2;  // dp = do vᵀ                        [N, N]
        g2.trans_b = true; g2.M = N; g2.N = N; g2.K = Dh;
        g2.A = dout; g2.lda = D; g2.B = v; g2.ldb = ld; g2.C = ds; g2.ldc = N;
        if (st.ok()) st = gemm(g2);
        softmax_backward_rows(p, ds, N);
        Gemm g3;  // dq = scale · ds k                  [N, Dh]
        g3.M = N; g3.N = Dh; g3.K = N; g3.alpha = scale;
        g3.A = ds; g3.lda = N; g3.B = k; g3.ldb = ld; g3.C = dq; g3.ldc = ld;
        if (st.ok()) st = gemm(g3);
        Gemm g4;  // dk = scale · dsᵀ q                 [N, Dh]
        g4.trans_a = true; g4.M = N; g4.N = Dh; g4.K = N; g4.alpha = scale;
        g4.A = ds; g4.lda = N; g4.B = q; g4.ldb = ld; g4.C = dk; g4.ldc = ld;
        if (st.ok()) st = gemm(g4);
        if (!st.ok()) {
#pragma omp critical
          status = st;
        }
      }
  }
  return status;
}

}  // namespace repadapter
