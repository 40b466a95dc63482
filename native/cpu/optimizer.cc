// Optimizer updates: one fused pass over a range of the flat parameter, gradient and state
// buffers. The arithmetic follows torch.optim's single-tensor (foreach=False) code path, in the
// same order, so a few steps match PyTorch to float32 rounding.
#include <cmath>

#include "cpu_backend.h"

namespace repadapter {

Status CpuBackend::adamw_update(float* param, const float* grad, float* m, float* v, int64_t n,
                                const AdamWStep& s) {
  // Bias corrections in double, as torch computes them in Python.
  const double t = static_cast<double>(s.step);
  const double bias1 = 1.0 - std::pow(static_cast<double>(s.beta1), t);
  const double bias2 = 1.0 - std::pow(static_cast<double>(s.beta2), t);
  const float step_size = static_cast<float>(s.lr / bias1);
  const float bias2_sqrt = static_cast<float>(std::sqrt(bias2));
  const float decay = 1.0f - s.lr * s.weight_decay;
  const float w1 = static_cast<float>(1.0 - s.beta1);  // torch: exp_avg.lerp_(g, 1 − β1)
  const float b2 = static_cast<float>(s.beta2), w2 = static_cast<float>(1.0 - s.beta2);
#pragma omp parallel for schedule(static) if (n > (1 << 15))
  for (int64_t i = 0; i < n; ++i) {
    const float g = grad[i] * s.grad_scale;
    const float p = param[i] * decay;
    m[i] = m[i] + w1 * (g - m[i]);
    v[i] = v[i] * b2 + w2 * g * g;
    const float denom = std::sqrt(v[i]) / bias2_sqrt + s.eps;
    param[i] = p - step_size * (m[i] / denom);
  }
  return Status::Ok();
}

Status CpuBackend::sgd_update(float* param, const float* grad, float* buf, int64_t n,
                              const SgdStep& s) {
#pragma omp parallel for schedule(static) if (n > (1 << 15))
  for (int64_t i = 0; i < n; ++i) {
    float g = grad[i] * s.grad_scale;
    if (s.weight_decay != 0.0f) g += s.weight_decay * param[i];
    if (s.momentum != 0.0f) {
      buf[i] = s.first ? g : s.momentum * buf[i] + (1.0f - s.dampening) * g;
      g = s.nesterov ? g + s.momentum * buf[i] : buf[i];
    }
    param[i] -= s.lr * g;
  }
  return Status::Ok();
}

Status CpuBackend::sum_squares(const float* x, int64_t n, double* host_out) {
  double total = 0;
#pragma omp parallel for reduction(+ : total) schedule(static) if (n > (1 << 15))
  for (int64_t i = 0; i < n; ++i) total += static_cast<double>(x[i]) * x[i];
  *host_out = total;
  return Status::Ok();
}

}  // namespace repadapter
