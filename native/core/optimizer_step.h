// The host's half of an optimizer step: the per-range and per-step scalars the update ops read
// from backend memory (backend.h, UpdateJob), derived here once for every backend, in double
// where torch derives them in Python, so that both backends update bit for bit alike.
#pragma once
#include <cmath>
#include <vector>

#include "backend.h"

namespace repadapter {

// The jobs of an update over `ranges`, empty ranges dropped (the ops find a value's range by a
// search over strictly increasing starts). adamw: AdamW's step (for 1 − β1ᵗ); null for SGD.
inline std::vector<UpdateJob> update_jobs(const UpdateRange* ranges, int64_t count,
                                          const AdamWStep* adamw, int64_t* total) {
  const double bias1 =
      adamw ? 1.0 - std::pow(adamw->beta1, static_cast<double>(adamw->step)) : 1.0;
  std::vector<UpdateJob> jobs;
  jobs.reserve(static_cast<size_t>(count));
  int64_t start = 0;
  for (int64_t r = 0; r < count; ++r) {
    const UpdateRange& u = ranges[r];
    if (u.n <= 0) continue;
    UpdateJob job{start, u.offset, u.n, u.lr, u.weight_decay};
    if (adamw) {
      job.a = static_cast<float>(u.lr / bias1);
      job.b = 1.0f - u.lr * u.weight_decay;
    }
    jobs.push_back(job);
    start += u.n;
  }
  *total = start;
  return jobs;
}

inline AdamWScalars adamw_scalars(const AdamWStep& s) {
  const double bias2 = 1.0 - std::pow(s.beta2, static_cast<double>(s.step));
  AdamWScalars out;
  out.w1 = static_cast<float>(1.0 - s.beta1);  // torch: exp_avg.lerp_(g, 1 − β1)
  out.b2 = static_cast<float>(s.beta2);
  out.w2 = static_cast<float>(1.0 - s.beta2);
  out.eps = s.eps;
  out.bias2_sqrt = static_cast<float>(std::sqrt(bias2));
  out.grad_scale = s.grad_scale;
  return out;
}

inline SgdScalars sgd_scalars(const SgdStep& s) {
  SgdScalars out;
  out.momentum = s.momentum;
  out.dampening = s.dampening;
  out.grad_scale = s.grad_scale;
  out.nesterov = s.nesterov ? 1 : 0;
  out.first = s.first ? 1 : 0;
  return out;
}

// clip_grad_scale's arithmetic, shared by the backends (host and device alike).
#if defined(__CUDACC__)
__host__ __device__
#endif
inline float clipped_grad_scale(double sum_squares, double pre_scale, double max_norm) {
  const double norm = sqrt(sum_squares) * pre_scale;
  const double coefficient = max_norm / (norm + 1e-6);
  return static_cast<float>(pre_scale * (coefficient < 1.0 ? coefficient : 1.0));
}

}  // namespace repadapter
