// One row of LayerNorm, shared by layernorm.cc and the fused layernorm_adapter.cc so that both
// give the same bits. Always inlined: each caller's target_clones version compiles it for its own
// ISA.
#pragma once
#include <cmath>
#include <cstdint>

#include "vmath.h"

namespace repadapter {

// y = (x − μ)·r·w + b with r = 1/√(var + eps). Two passes (mean, then centred squares) in vector
// lanes of float: each lane sums D/16 terms, so the rounding error stays far below float32's
// resolution of y.
RA_ALWAYS_INLINE void layernorm_row(const float* x, const float* w, const float* b, float* y,
                                    int64_t D, float eps, float* mean, float* rstd) {
  float sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t d = 0; d < D; ++d) sum += x[d];
  const float mu = sum / static_cast<float>(D);
  float sq = 0;
#pragma omp simd reduction(+ : sq)
  for (int64_t d = 0; d < D; ++d) sq += (x[d] - mu) * (x[d] - mu);
  const float r = 1.0f / std::sqrt(sq / static_cast<float>(D) + eps);
#pragma omp simd
  for (int64_t d = 0; d < D; ++d) y[d] = (x[d] - mu) * r * w[d] + b[d];
  *mean = mu;
  *rstd = r;
}

}  // namespace repadapter
