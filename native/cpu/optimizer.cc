// Optimizer updates: one fused pass over the ranges of the flat parameter, gradient and state
// buffers. The arithmetic follows torch.optim's single-tensor (foreach=False) code path, in the
// same order, so a few steps match PyTorch to float32 rounding. The scalars come derived
// (core/optimizer_step.h).
#include <cmath>

#include "../core/optimizer_step.h"
#include "cpu_backend.h"

namespace repadapter {

Status CpuBackend::adamw_update(float* param, const float* grad, float* m, float* v,
                                const UpdateJob* jobs, int64_t count, int64_t total,
                                const AdamWScalars* scalars) {
  const AdamWScalars s = *scalars;
  // One parallel region for all ranges: parameter groups alternate every few tensors, and a
  // region per range would cost more than the update of a small one.
#pragma omp parallel if (total > (1 << 15))
  for (int64_t r = 0; r < count; ++r) {
    const UpdateJob& job = jobs[r];
    const float step_size = job.a, decay = job.b;
    float *p_r = param + job.offset, *m_r = m + job.offset, *v_r = v + job.offset;
    const float* g_r = grad + job.offset;
#pragma omp for schedule(static) nowait
    for (int64_t i = 0; i < job.n; ++i) {
      const float g = g_r[i] * s.grad_scale;
      const float p = p_r[i] * decay;
      m_r[i] = m_r[i] + s.w1 * (g - m_r[i]);
      v_r[i] = v_r[i] * s.b2 + s.w2 * g * g;
      const float denom = std::sqrt(v_r[i]) / s.bias2_sqrt + s.eps;
      p_r[i] = p - step_size * (m_r[i] / denom);
    }
  }
  return Status::Ok();
}

Status CpuBackend::sgd_update(float* param, const float* grad, float* buf, const UpdateJob* jobs,
                              int64_t count, int64_t total, const SgdScalars* scalars) {
  const SgdScalars s = *scalars;
  if (s.momentum != 0.0f && buf == nullptr)
    return InvalidArgument("sgd_update: momentum needs a state buffer");
#pragma omp parallel if (total > (1 << 15))
  for (int64_t r = 0; r < count; ++r) {
    const UpdateJob& job = jobs[r];
    const float lr = job.a, weight_decay = job.b;
    float* p_r = param + job.offset;
    float* b_r = buf ? buf + job.offset : nullptr;
    const float* g_r = grad + job.offset;
#pragma omp for schedule(static) nowait
    for (int64_t i = 0; i < job.n; ++i) {
      float g = g_r[i] * s.grad_scale;
      if (weight_decay != 0.0f) g += weight_decay * p_r[i];
      if (s.momentum != 0.0f) {
        b_r[i] = s.first ? g : s.momentum * b_r[i] + (1.0f - s.dampening) * g;
        g = s.nesterov ? g + s.momentum * b_r[i] : b_r[i];
      }
      p_r[i] -= lr * g;
    }
  }
  return Status::Ok();
}

Status CpuBackend::sum_squares(const float* x, int64_t n, double* out) {
  double total = 0;
#pragma omp parallel for reduction(+ : total) schedule(static) if (n > (1 << 15))
  for (int64_t i = 0; i < n; ++i) total += static_cast<double>(x[i]) * x[i];
  *out = total;
  return Status::Ok();
}

Status CpuBackend::clip_grad_scale(const double* sum_squares, double pre_scale, double max_norm,
                                   float* grad_scale) {
  *grad_scale = clipped_grad_scale(*sum_squares, pre_scale, max_norm);
  return Status::Ok();
}

}  // namespace repadapter
