// Optimizer updates on the GPU, as cpu/optimizer.cc: one launch over every range of the flat
// parameter, gradient and state buffers, torch.optim's single-tensor arithmetic in the same
// order. The scalars arrive derived on the host (core/optimizer_step.h) and lie in device
// memory, with the range table, so that a recorded training step reads the current step's; the
// per-element formulas use the __f*_rn intrinsics (no FMA, IEEE sqrt and division), so an
// update is bit-identical to the CPU's.
//
// One launch, not one per range: parameter groups (no weight decay on biases and norms)
// alternate every tensor or two, so an adapter update has ~50 ranges of a few hundred values,
// where launches would cost more than the work. Each thread finds its range by binary search
// over the ranges' starts in the concatenated index space.
#include "../core/optimizer_step.h"
#include "common.cuh"

namespace repadapter {
namespace {

__device__ __forceinline__ const UpdateJob& find_range(const UpdateJob* jobs, int64_t count,
                                                       int64_t j) {
  int64_t lo = 0, hi = count - 1;  // the last range whose start is ≤ j
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (jobs[mid].start <= j) lo = mid; else hi = mid - 1;
  }
  return jobs[lo];
}

__global__ void adamw_kernel(float* param, const float* grad, float* m, float* v,
                             const UpdateJob* jobs, int64_t count, int64_t total,
                             const AdamWScalars* scalars) {
  const AdamWScalars s = *scalars;
  RA_GRID_LOOP(j, total) {
    const UpdateJob& r = find_range(jobs, count, j);
    const int64_t i = r.offset + (j - r.start);
    const float step_size = r.a, decay = r.b;
    const float g = __fmul_rn(grad[i], s.grad_scale);
    const float p = __fmul_rn(param[i], decay);
    // m ← m + (1−β1)(g − m) (torch's lerp_), v ← β2·v + (1−β2)·g², with 1 − β rounded once.
    const float mi = __fadd_rn(m[i], __fmul_rn(s.w1, __fsub_rn(g, m[i])));
    const float vi = __fadd_rn(__fmul_rn(v[i], s.b2), __fmul_rn(__fmul_rn(s.w2, g), g));
    m[i] = mi;
    v[i] = vi;
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), s.bias2_sqrt), s.eps);
    param[i] = __fsub_rn(p, __fmul_rn(step_size, __fdiv_rn(mi, denom)));
  }
}

__global__ void sgd_kernel(float* param, const float* grad, float* buf, const UpdateJob* jobs,
                           int64_t count, int64_t total, const SgdScalars* scalars) {
  const SgdScalars s = *scalars;
  RA_GRID_LOOP(j, total) {
    const UpdateJob& r = find_range(jobs, count, j);
    const int64_t i = r.offset + (j - r.start);
    const float lr = r.a, weight_decay = r.b;
    float g = __fmul_rn(grad[i], s.grad_scale);
    if (weight_decay != 0.0f) g = __fadd_rn(g, __fmul_rn(weight_decay, param[i]));
    if (s.momentum != 0.0f) {
      const float b = s.first ? g
                              : __fadd_rn(__fmul_rn(s.momentum, buf[i]),
                                          __fmul_rn(__fsub_rn(1.0f, s.dampening), g));
      buf[i] = b;
      g = s.nesterov ? __fadd_rn(g, __fmul_rn(s.momentum, b)) : b;
    }
    param[i] = __fsub_rn(param[i], __fmul_rn(lr, g));
  }
}

// Σ x² per block in double, into partial[blockIdx.x]; a second pass adds the blocks in order.
__global__ void sum_squares_kernel(const float* x, int64_t n, double* partial) {
  __shared__ double shared[32];
  double acc = 0;
  RA_GRID_LOOP(i, n) acc += static_cast<double>(x[i]) * x[i];
  acc = cuda_detail::block_sum(acc, shared);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

__global__ void sum_partials_kernel(const double* partial, int64_t count, double* out) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  double t = 0;
  for (int64_t i = 0; i < count; ++i) t += partial[i];
  *out = t;
}

__global__ void clip_grad_scale_kernel(const double* sum_squares, double pre_scale,
                                       double max_norm, float* grad_scale) {
  if (threadIdx.x == 0 && blockIdx.x == 0)
    *grad_scale = clipped_grad_scale(*sum_squares, pre_scale, max_norm);
}

}  // namespace

Status CudaBackend::adamw_update(float* param, const float* grad, float* m, float* v,
                                 const UpdateJob* jobs, int64_t count, int64_t total,
                                 const AdamWScalars* s) {
  RA_CUDA_ENTRY();
  if (total <= 0 || count <= 0) return Status::Ok();
  adamw_kernel<<<blocks_for(total), 256, 0, stream_>>>(param, grad, m, v, jobs, count, total, s);
  return launched("adamw_update");
}

Status CudaBackend::sgd_update(float* param, const float* grad, float* buf, const UpdateJob* jobs,
                               int64_t count, int64_t total, const SgdScalars* s) {
  RA_CUDA_ENTRY();
  // Whether momentum is on is a property of the optimizer, not of a step: the host knows it.
  if (total <= 0 || count <= 0) return Status::Ok();
  sgd_kernel<<<blocks_for(total), 256, 0, stream_>>>(param, grad, buf, jobs, count, total, s);
  return launched("sgd_update");
}

// Deterministic: a fixed grid for a given n and GPU, blocks added in order.
Status CudaBackend::sum_squares(const float* x, int64_t n, double* out) {
  RA_CUDA_ENTRY();
  if (n <= 0)
    return from_cuda(cudaMemsetAsync(out, 0, sizeof(double), stream_), "cudaMemsetAsync (sum_squares)");
  const unsigned blocks = blocks_for(n);
  void* tmp = nullptr;
  RA_RETURN_IF_ERROR(scratch(blocks * sizeof(double), &tmp));
  double* partial = static_cast<double*>(tmp);
  sum_squares_kernel<<<blocks, 256, 0, stream_>>>(x, n, partial);
  RA_RETURN_IF_ERROR(launched("sum_squares"));
  sum_partials_kernel<<<1, 32, 0, stream_>>>(partial, blocks, out);
  return launched("sum_squares (total)");
}

Status CudaBackend::clip_grad_scale(const double* sum_squares, double pre_scale, double max_norm,
                                    float* grad_scale) {
  RA_CUDA_ENTRY();
  clip_grad_scale_kernel<<<1, 32, 0, stream_>>>(sum_squares, pre_scale, max_norm, grad_scale);
  return launched("clip_grad_scale");
}

}  // namespace repadapter
