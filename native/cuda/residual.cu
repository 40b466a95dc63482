// The residual stream with stochastic depth, as cpu/residual.cc; bit-identical (no FMA).
#include "../core/bf16.h"
#include "common.cuh"

namespace repadapter {
namespace {

// y[b] = x[b] + keep_scale[b] · branch[b] over rows of `row` elements; keep_scale null means
// ones. y may equal x (each thread reads then writes one element).
__global__ void residual_add_kernel(float* y, const float* x, const float* branch,
                                    const float* keep_scale, int64_t B, int64_t row) {
  RA_GRID_LOOP(i, B * row) {
    const float s = keep_scale ? keep_scale[i / row] : 1.0f;
    y[i] = __fadd_rn(x[i], __fmul_rn(s, branch[i]));
  }
}

// d_branch[b] = keep_scale[b] · dx[b] (overwrites), or its bf16 rounding into d16.
__global__ void residual_backward_kernel(const float* dx, float* d_branch, uint16_t* d16,
                                         const float* keep_scale, int64_t B, int64_t row) {
  RA_GRID_LOOP(i, B * row) {
    const float s = keep_scale ? keep_scale[i / row] : 1.0f;
    const float v = __fmul_rn(s, dx[i]);
    if (d16)
      d16[i] = bf16_from_float(v);
    else
      d_branch[i] = v;
  }
}

}  // namespace

Status CudaBackend::residual_add(float* y, const float* x, const float* branch,
                                 const float* keep_scale, int64_t B, int64_t row) {
  RA_CUDA_ENTRY();
  if (B * row <= 0) return Status::Ok();
  residual_add_kernel<<<blocks_for(B * row), 256, 0, stream_>>>(y, x, branch, keep_scale, B, row);
  return launched("residual_add");
}

Status CudaBackend::residual_backward(const float* dx, float* d_branch, uint16_t* d_branch_bf16,
                                      const float* keep_scale, int64_t B, int64_t row) {
  RA_RETURN_IF_ERROR(one_output(d_branch, d_branch_bf16, true, "residual_backward: exactly one of d_branch and d_branch_bf16"));
  RA_CUDA_ENTRY();
  if (B * row <= 0) return Status::Ok();
  residual_backward_kernel<<<blocks_for(B * row), 256, 0, stream_>>>(dx, d_branch, d_branch_bf16,
                                                                      keep_scale, B, row);
  return launched("residual_backward");
}

}  // namespace repadapter
