// Optimizer updates: one fused pass over the ranges of the flat parameter, gradient and state
// buffers. The arithmetic follows torch.optim's single-tensor (foreach=False) code path, in the
// same order, so a few steps match PyTorch to float32 rounding.
#include <cmath>

#include "cpu_backend.h"

namespace repadapter {
namespace {

int64_t total_of(const UpdateRange* ranges, int64_t count) {
  int64_t total = 0;
  for (int64_t r = 0; r < count; ++r) total += ranges[r].n;
  return total;
}

}  // namespace

Status CpuBackend::adamw_update(float* param, const float* grad, float* m, float* v,
                                const UpdateRange* ranges, int64_t count, const AdamWStep& s) {
  // Bias corrections in double, as torch computes them in Python.
  const double t = static_cast<double>(s.step);
  const double bias1 = 1.0 - std::pow(static_cast<double>(s.beta1), t);
  const double bias2 = 1.0 - std::pow(static_cast<double>(s.beta2), t);
  const float bias2_sqrt = static_cast<float>(std::sqrt(bias2));
  const float w1 = static_cast<float>(1.0 - s.beta1);  // torch: exp_avg.lerp_(g, 1 − β1)
  const float b2 = static_cast<float>(s.beta2), w2 = static_cast<float>(1.0 - s.beta2);
  // One parallel region for all ranges: parameter groups alternate every few tensors, and a
  // region per range would cost more than the update of a small one.
#pragma omp parallel if (total_of(ranges, count) > (1 << 15))
  for (int64_t r = 0; r < count; ++r) {
    const UpdateRange& range = ranges[r];
    const float step_size = static_cast<float>(range.lr / bias1);
    const float decay = 1.0f - range.lr * range.weight_decay;
    float *p_r = param + range.offset, *m_r = m + range.offset, *v_r = v + range.offset;
    const float* g_r = grad + range.offset;
#pragma omp for schedule(static) nowait
    for (int64_t i = 0; i < range.n; ++i) {
      const float g = g_r[i] * s.grad_scale;
      const float p = p_r[i] * decay;
      m_r[i] = m_r[i] + w1 * (g - m_r[i]);
      v_r[i] = v_r[i] * b2 + w2 * g * g;
      const float denom = std::sqrt(v_r[i]) / bias2_sqrt + s.eps;
      p_r[i] = p - step_size * (m_r[i] / denom);
    }
  }
  return Status::Ok();
}

Status CpuBackend::sgd_update(float* param, const float* grad, float* buf,
                              const UpdateRange* ranges, int64_t count, const SgdStep& s) {
  if (s.momentum != 0.0f && buf == nullptr)
    return InvalidArgument("sgd_update: momentum needs a state buffer");
#pragma omp parallel if (total_of(ranges, count) > (1 << 15))
  for (int64_t r = 0; r < count; ++r) {
    const UpdateRange& range = ranges[r];
    float* p_r = param + range.offset;
    float* b_r = buf ? buf + range.offset : nullptr;
    const float* g_r = grad + range.offset;
#pragma omp for schedule(static) nowait
    for (int64_t i = 0; i < range.n; ++i) {
      float g = g_r[i] * s.grad_scale;
      if (range.weight_decay != 0.0f) g += range.weight_decay * p_r[i];
      if (s.momentum != 0.0f) {
        b_r[i] = s.first ? g : s.momentum * b_r[i] + (1.0f - s.dampening) * g;
        g = s.nesterov ? g + s.momentum * b_r[i] : b_r[i];
      }
      p_r[i] -= range.lr * g;
    }
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
