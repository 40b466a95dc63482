// The residual stream with stochastic depth (timm's drop_path): a dropped sample skips the
// branch, a kept one scales it by 1/keep so the expectation is unchanged.
#include "../core/bf16.h"
#include "cpu_backend.h"

namespace repadapter {

Status CpuBackend::residual_add(float* y, const float* x, const float* branch,
                                const float* keep_scale, int64_t B, int64_t row) {
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < row; ++i) {
      const float s = keep_scale ? keep_scale[b] : 1.0f;
      y[b * row + i] = x[b * row + i] + s * branch[b * row + i];
    }
  return Status::Ok();
}

Status CpuBackend::residual_backward(const float* dx, float* d_branch, uint16_t* d_branch_bf16,
                                     const float* keep_scale, int64_t B, int64_t row) {
  RA_RETURN_IF_ERROR(one_output(d_branch, d_branch_bf16, true, "residual_backward: exactly one of d_branch and d_branch_bf16"));
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < row; ++i) {
      const float s = keep_scale ? keep_scale[b] : 1.0f;
      const float v = s * dx[b * row + i];
      if (d_branch)
        d_branch[b * row + i] = v;
      else
        d_branch_bf16[b * row + i] = bf16_from_float(v);
    }
  return Status::Ok();
}

}  // namespace repadapter
