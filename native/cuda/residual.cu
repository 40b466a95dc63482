// The residual stream with stochastic depth, as cpu/residual.cc; bit-identical (no FMA).
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

// d_branch[b] = keep_scale[b] · dx[b] (overwrites).
__global__ void residual_backward_kernel(const float* dx, float* d_branch, const float* keep_scale,
                                         int64_t B, int64_t row) {
  RA_GRID_LOOP(i, B * row) {
    const float s = keep_scale ? keep_scale[i / row] : 1.0f;
    d_branch[i] = __fmul_rn(s, dx[i]);
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

Status CudaBackend::residual_backward(const float* dx, float* d_branch, const float* keep_scale,
                                      int64_t B, int64_t row) {
  RA_CUDA_ENTRY();
  if (B * row <= 0) return Status::Ok();
  residual_backward_kernel<<<blocks_for(B * row), 256, 0, stream_>>>(dx, d_branch, keep_scale, B, row);
  return launched("residual_backward");
}

}  // namespace repadapter
