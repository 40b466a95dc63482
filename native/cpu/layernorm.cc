// LayerNorm over the last dimension, as torch.nn.LayerNorm (biased variance, eps inside sqrt).
#include <cmath>
#include <vector>

#include "../core/bf16.h"
#include "cpu_backend.h"
#include "layernorm_row.h"

namespace repadapter {
namespace {

RA_VECTOR_CLONES void normalize_row(const float* x, const float* w, const float* b, float* y,
                                    int64_t D, float eps, float* mean, float* rstd) {
  layernorm_row(x, w, b, y, D, eps, mean, rstd);
}

}  // namespace

Status CpuBackend::layernorm_forward(const float* x, int64_t ldx, const float* w, const float* b,
                                     float* y, uint16_t* y_bf16, int64_t ldy, float* mean,
                                     float* rstd, int64_t M, int64_t D, float eps) {
  RA_RETURN_IF_ERROR(one_output(y, y_bf16, true, "layernorm_forward: exactly one of y and y_bf16"));
#pragma omp parallel
  {
    // A bf16 y: each row in float32 first, then rounded.
    std::vector<float> row(y_bf16 ? D : 0);
#pragma omp for schedule(static)
    for (int64_t m = 0; m < M; ++m) {
      float mu, r;
      normalize_row(x + m * ldx, w, b, y ? y + m * ldy : row.data(), D, eps, &mu, &r);
      if (y_bf16)
        for (int64_t d = 0; d < D; ++d) y_bf16[m * ldy + d] = bf16_from_float(row[d]);
      if (mean) mean[m] = mu;
      if (rstd) rstd[m] = r;
    }
  }
  return Status::Ok();
}

// With x̂ = (x − μ)·r and g = dy ⊙ w:  dx = r · (g − mean(g) − x̂ · mean(g ⊙ x̂)).
Status CpuBackend::layernorm_backward(const float* dy, int64_t ldy, const float* x, int64_t ldx,
                                      const float* w, const float* mean, const float* rstd,
                                      float* dx, float* dw, float* db, int64_t M, int64_t D) {
  if (dx) {
#pragma omp parallel for schedule(static)
    for (int64_t m = 0; m < M; ++m) {
      const float* xr = x + m * ldx;
      const float* gr = dy + m * ldy;
      const float mu = mean[m], r = rstd[m];
      double sum_g = 0, sum_gx = 0;
      for (int64_t d = 0; d < D; ++d) {
        const float g = gr[d] * w[d];
        sum_g += g;
        sum_gx += g * ((xr[d] - mu) * r);
      }
      const float mg = static_cast<float>(sum_g / D), mgx = static_cast<float>(sum_gx / D);
      float* out = dx + m * ldx;
      for (int64_t d = 0; d < D; ++d) {
        const float xhat = (xr[d] - mu) * r;
        out[d] += r * (gr[d] * w[d] - mg - xhat * mgx);
      }
    }
  }
  if (dw || db) {
    // Per-column sums, columns split across threads: deterministic order.
#pragma omp parallel for schedule(static)
    for (int64_t d = 0; d < D; ++d) {
      double acc_w = 0, acc_b = 0;
      for (int64_t m = 0; m < M; ++m) {
        const float g = dy[m * ldy + d];
        acc_w += g * ((x[m * ldx + d] - mean[m]) * rstd[m]);
        acc_b += g;
      }
      if (dw) dw[d] += static_cast<float>(acc_w);
      if (db) db[d] += static_cast<float>(acc_b);
    }
  }
  return Status::Ok();
}

}  // namespace repadapter
