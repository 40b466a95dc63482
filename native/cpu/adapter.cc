// RepAdapter: z = A x + a (a gemm, composed in the model), dropout on z, then the group-sparse
// up-projection y = x + s·(B̂ z + b), and the fold of the whole adapter into the next Linear.
//
// B̂ is the block-diagonal D×R matrix of conv_B: output group k (D/G columns of y) reads only
// the R/G entries of z in group k. With R = 8 and G = 2 an output reads 4 numbers, so a plain
// loop beats any gemm call here.
#include <vector>

#include "../core/rng.h"
#include "cpu_backend.h"

namespace repadapter {

Status CpuBackend::dropout_forward(float* z, int64_t n, float p, uint64_t seed, uint64_t stream) {
  if (p <= 0.0f) return Status::Ok();
  const float keep_scale = 1.0f / (1.0f - p);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i)
    z[i] = uniform01(seed, stream, static_cast<uint64_t>(i)) >= p ? z[i] * keep_scale : 0.0f;
  return Status::Ok();
}

// The mask is recomputed from (seed, stream, i), never stored.
Status CpuBackend::dropout_backward(float* dz, int64_t n, float p, uint64_t seed,
                                    uint64_t stream) {
  return dropout_forward(dz, n, p, seed, stream);
}

Status CpuBackend::adapter_up_forward(const float* x, const float* z, const float* w,
                                      const float* b, float* y, int64_t M, int64_t D, int64_t R,
                                      int64_t G, float scale) {
  const int64_t Dg = D / G, Rg = R / G;
#pragma omp parallel for schedule(static)
  for (int64_t m = 0; m < M; ++m) {
    const float* xr = x + m * D;
    const float* zr = z + m * R;
    float* yr = y + m * D;
    for (int64_t d = 0; d < D; ++d) {
      const float* zg = zr + (d / Dg) * Rg;
      const float* wr = w + d * Rg;
      float acc = b[d];
      for (int64_t j = 0; j < Rg; ++j) acc += wr[j] * zg[j];
      yr[d] = xr[d] + scale * acc;
    }
  }
  return Status::Ok();
}

Status CpuBackend::adapter_up_backward(const float* dy, const float* z, const float* w, float* dz,
                                       float* dw, float* db, int64_t M, int64_t D, int64_t R,
                                       int64_t G, float scale) {
  const int64_t Dg = D / G, Rg = R / G;
  if (dz) {
#pragma omp parallel for schedule(static)
    for (int64_t m = 0; m < M; ++m) {
      const float* gr = dy + m * D;
      float* out = dz + m * R;
      for (int64_t r = 0; r < R; ++r) out[r] = 0.0f;
      for (int64_t d = 0; d < D; ++d) {
        float* og = out + (d / Dg) * Rg;
        const float* wr = w + d * Rg;
        for (int64_t j = 0; j < Rg; ++j) og[j] += gr[d] * wr[j];
      }
      for (int64_t r = 0; r < R; ++r) out[r] *= scale;
    }
  }
  if (dw || db) {
#pragma omp parallel for schedule(static)
    for (int64_t d = 0; d < D; ++d) {
      const int64_t k = d / Dg;
      std::vector<double> acc(Rg, 0.0);
      double acc_b = 0;
      for (int64_t m = 0; m < M; ++m) {
        const float g = dy[m * D + d];
        const float* zg = z + m * R + k * Rg;
        for (int64_t j = 0; j < Rg; ++j) acc[j] += static_cast<double>(g) * zg[j];
        acc_b += g;
      }
      if (dw)
        for (int64_t j = 0; j < Rg; ++j) dw[d * Rg + j] += static_cast<float>(scale * acc[j]);
      if (db) db[d] += static_cast<float>(scale * acc_b);
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
