// RepAdapter: z = A x + a (a gemm, composed in the model), dropout on z, then the group-sparse
// up-projection y = x + s·(B̂ z + b), and the fold of the whole adapter into the next Linear.
//
// B̂ is the block-diagonal D×R matrix of conv_B: output group k (D/G columns of y) reads only
// the R/G entries of z in group k. With R = 8 and G = 2 an output reads 4 numbers, so a plain
// loop beats any gemm call here.
#include <algorithm>
#include <vector>

#include "../core/rng.h"
#include "cpu_backend.h"
#include "vmath.h"

namespace repadapter {

Status CpuBackend::dropout_forward(float* z, int64_t n, float p, uint64_t seed,
                                   const uint64_t* step_key, uint64_t site) {
  if (p <= 0.0f) return Status::Ok();
  const float keep_scale = 1.0f / (1.0f - p);
  const uint64_t stream = *step_key ^ site;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i)
    z[i] = uniform01(seed, stream, static_cast<uint64_t>(i)) >= p ? z[i] * keep_scale : 0.0f;
  return Status::Ok();
}

// The mask is recomputed from (seed, step key, site, i), never stored.
Status CpuBackend::dropout_backward(float* dz, int64_t n, float p, uint64_t seed,
                                    const uint64_t* step_key, uint64_t site) {
  return dropout_forward(dz, n, p, seed, step_key, site);
}

namespace {

// conv_B's weight [D, R/G] transposed to [R/G, D], so the loops over D below run on contiguous
// memory in vector lanes (D·R/G values: a few kilobytes).
std::vector<float> transpose_up(const float* w, int64_t D, int64_t Rg) {
  std::vector<float> wt(D * Rg);
  for (int64_t d = 0; d < D; ++d)
    for (int64_t j = 0; j < Rg; ++j) wt[j * D + d] = w[d * Rg + j];
  return wt;
}

// y = x + s·(B̂ z + b) for rows m0 … m1.
RA_VECTOR_CLONES void up_rows(const float* x, const float* z, const float* wt, const float* b,
                              float* y, int64_t m0, int64_t m1, int64_t D, int64_t R,
                              int64_t G, float scale) {
  const int64_t Dg = D / G, Rg = R / G;
  for (int64_t m = m0; m < m1; ++m)
    for (int64_t k = 0; k < G; ++k) {
      const float* zg = z + m * R + k * Rg;
      const int64_t d0 = k * Dg;
      const float* xr = x + m * D + d0;
      float* yr = y + m * D + d0;
#pragma omp simd
      for (int64_t d = 0; d < Dg; ++d) {
        float acc = b[d0 + d];
        for (int64_t j = 0; j < Rg; ++j) acc += wt[j * D + d0 + d] * zg[j];
        yr[d] = xr[d] + scale * acc;
      }
    }
}

// dz = s·B̂ᵀ dy for rows m0 … m1.
RA_VECTOR_CLONES void up_backward_rows(const float* dy, const float* wt, float* dz, int64_t m0,
                                       int64_t m1, int64_t D, int64_t R, int64_t G, float scale) {
  const int64_t Dg = D / G, Rg = R / G;
  for (int64_t m = m0; m < m1; ++m)
    for (int64_t k = 0; k < G; ++k)
      for (int64_t j = 0; j < Rg; ++j) {
        const float* g = dy + m * D + k * Dg;
        const float* w = wt + j * D + k * Dg;
        float dot = 0;
#pragma omp simd reduction(+ : dot)
        for (int64_t d = 0; d < Dg; ++d) dot += g[d] * w[d];
        dz[m * R + k * Rg + j] = scale * dot;
      }
}

// Partial sums over rows m0 … m1 of dyᵀ z (per conv_B entry, transposed: [R/G, D]) and of dy.
RA_VECTOR_CLONES void up_weight_rows(const float* dy, const float* z, double* dwt, double* db,
                                     int64_t m0, int64_t m1, int64_t D, int64_t R, int64_t G) {
  const int64_t Dg = D / G, Rg = R / G;
  for (int64_t m = m0; m < m1; ++m) {
    const float* g = dy + m * D;
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) db[d] += g[d];
    for (int64_t k = 0; k < G; ++k)
      for (int64_t j = 0; j < Rg; ++j) {
        const float zv = z[m * R + k * Rg + j];
        double* acc = dwt + j * D + k * Dg;
        const float* gk = g + k * Dg;
#pragma omp simd
        for (int64_t d = 0; d < Dg; ++d) acc[d] += static_cast<double>(gk[d] * zv);
      }
  }
}

constexpr int64_t kRowBlock = 128;

}  // namespace

Status CpuBackend::adapter_up_forward(const float* x, const float* z, const float* w,
                                      const float* b, float* y, int64_t M, int64_t D, int64_t R,
                                      int64_t G, float scale) {
  const std::vector<float> wt = transpose_up(w, D, R / G);
#pragma omp parallel for schedule(static)
  for (int64_t m0 = 0; m0 < M; m0 += kRowBlock)
    up_rows(x, z, wt.data(), b, y, m0, std::min(M, m0 + kRowBlock), D, R, G, scale);
  return Status::Ok();
}

Status CpuBackend::adapter_up_backward(const float* dy, const float* z, const float* w, float* dz,
                                       float* dw, float* db, int64_t M, int64_t D, int64_t R,
                                       int64_t G, float scale) {
  const int64_t Rg = R / G;
  const std::vector<float> wt = transpose_up(w, D, Rg);
  if (dz) {
#pragma omp parallel for schedule(static)
    for (int64_t m0 = 0; m0 < M; m0 += kRowBlock)
      up_backward_rows(dy, wt.data(), dz, m0, std::min(M, m0 + kRowBlock), D, R, G, scale);
  }
  if (dw || db) {
    // One partial sum per block of rows, added in block order: the same result for any
    // number of threads.
    const int64_t blocks = (M + kRowBlock - 1) / kRowBlock, stride = (Rg + 1) * D;
    std::vector<double> partial(blocks * stride, 0.0);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < blocks; ++i)
      up_weight_rows(dy, z, partial.data() + i * stride, partial.data() + i * stride + Rg * D,
                     i * kRowBlock, std::min(M, (i + 1) * kRowBlock), D, R, G);
    for (int64_t i = 1; i < blocks; ++i)
      for (int64_t e = 0; e < stride; ++e) partial[e] += partial[i * stride + e];
    for (int64_t d = 0; d < D; ++d) {
      if (dw)
        for (int64_t j = 0; j < Rg; ++j) dw[d * Rg + j] += static_cast<float>(scale * partial[j * D + d]);
      if (db) db[d] += static_cast<float>(scale * partial[Rg * D + d]);
    }
  }
  return Status::Ok();
}

// In float64 throughout, so the folded weights are the float32 rounding of the exact ones.
Status CpuBackend::adapter_fold(float* W, float* c, const float* A, const float* a,
                                const float* w, const float* b, int64_t O, int64_t D, int64_t R,
                                int64_t G, float scale) {
  const int64_t Dg = D / G, Rg = R / G;
  // u = B̂ a + b   [D]: the adapter's constant output shift.
  std::vector<double> u(D);
  for (int64_t d = 0; d < D; ++d) {
    const int64_t k = d / Dg;
    double acc = b[d];
    for (int64_t j = 0; j < Rg; ++j) acc += static_cast<double>(w[d * Rg + j]) * a[k * Rg + j];
    u[d] = acc;
  }
#pragma omp parallel for schedule(static)
  for (int64_t o = 0; o < O; ++o) {
    float* Wr = W + o * D;
    // WB = W B̂ (row o)   [R], and W u (row o), both from the unfolded W.
    std::vector<double> WB(R, 0.0);
    double Wu = 0;
    for (int64_t d = 0; d < D; ++d) {
      const double wod = Wr[d];
      const int64_t k = d / Dg;
      for (int64_t j = 0; j < Rg; ++j) WB[k * Rg + j] += wod * w[d * Rg + j];
      Wu += wod * u[d];
    }
    for (int64_t d = 0; d < D; ++d) {
      double acc = 0;
      for (int64_t r = 0; r < R; ++r) acc += WB[r] * A[r * D + d];
      Wr[d] = static_cast<float>(Wr[d] + scale * acc);
    }
    c[o] = static_cast<float>(c[o] + scale * Wu);
  }
  return Status::Ok();
}

}  // namespace repadapter
