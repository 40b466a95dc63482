// GELU in its exact form, x·Φ(x) with the erf-based normal CDF (timm's nn.GELU default), not
// the tanh approximation: the two differ by up to 1e-3, far above our tolerances.
#include <cmath>

#include "cpu_backend.h"

namespace repadapter {

Status CpuBackend::gelu_forward(const float* x, float* y, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) y[i] = 0.5f * x[i] * (1.0f + std::erf(x[i] * float(M_SQRT1_2)));
  return Status::Ok();
}

// d/dx [x·Φ(x)] = Φ(x) + x·φ(x).
Status CpuBackend::gelu_backward(const float* x, float* d, int64_t n) {
  const float inv_sqrt_2pi = 0.3989422804014327f;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    const float cdf = 0.5f * (1.0f + std::erf(v * float(M_SQRT1_2)));
    const float pdf = inv_sqrt_2pi * std::exp(-0.5f * v * v);
    d[i] *= cdf + v * pdf;
  }
  return Status::Ok();
}

}  // namespace repadapter
