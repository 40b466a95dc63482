// Optimizer updates on the GPU, as cpu/optimizer.cc: one fused pass over a range of the flat
// parameter, gradient and state buffers, torch.optim's single-tensor arithmetic in the same
// order. Scalars that the CPU derives in double (Adam's bias corrections) are derived on the
// host here too, with the same expressions; the per-element formulas use the __f*_rn
// intrinsics (no FMA, IEEE sqrt and division), so an update is bit-identical to the CPU's.
#include <cmath>

#include "common.cuh"

namespace repadapter {
namespace {

__global__ void adamw_kernel(float* param, const float* grad, float* m, float* v, int64_t n,
                             float w1, float b2, float w2, float eps, float grad_scale,
                             float decay, float step_size, float bias2_sqrt) {
  RA_GRID_LOOP(i, n) {
    const float g = __fmul_rn(grad[i], grad_scale);
    const float p = __fmul_rn(param[i], decay);
    // m ← m + (1−β1)(g − m) (torch's lerp_), v ← β2·v + (1−β2)·g², with 1 − β rounded once.
    const float mi = __fadd_rn(m[i], __fmul_rn(w1, __fsub_rn(g, m[i])));
    const float vi = __fadd_rn(__fmul_rn(v[i], b2), __fmul_rn(__fmul_rn(w2, g), g));
    m[i] = mi;
    v[i] = vi;
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), bias2_sqrt), eps);
    param[i] = __fsub_rn(p, __fmul_rn(step_size, __fdiv_rn(mi, denom)));
  }
}

__global__ void sgd_kernel(float* param, const float* grad, float* buf, int64_t n, float lr,
                           float momentum, float dampening, float weight_decay, bool nesterov,
                           bool first, float grad_scale) {
  RA_GRID_LOOP(i, n) {
    float g = __fmul_rn(grad[i], grad_scale);
    if (weight_decay != 0.0f) g = __fadd_rn(g, __fmul_rn(weight_decay, param[i]));
    if (momentum != 0.0f) {
      const float b = first ? g
                            : __fadd_rn(__fmul_rn(momentum, buf[i]), __fmul_rn(__fsub_rn(1.0f, dampening), g));
      buf[i] = b;
      g = nesterov ? __fadd_rn(g, __fmul_rn(momentum, b)) : b;
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

}  // namespace

Status CudaBackend::adamw_update(float* param, const float* grad, float* m, float* v, int64_t n,
                                 const AdamWStep& s) {
  RA_CUDA_ENTRY();
  if (n <= 0) return Status::Ok();
  // The CPU's scalars, computed the CPU's way (double bias corrections, as torch in Python).
  const double t = static_cast<double>(s.step);
  const double bias1 = 1.0 - std::pow(static_cast<double>(s.beta1), t);
  const double bias2 = 1.0 - std::pow(static_cast<double>(s.beta2), t);
  const float step_size = static_cast<float>(s.lr / bias1);
  const float bias2_sqrt = static_cast<float>(std::sqrt(bias2));
  const float decay = 1.0f - s.lr * s.weight_decay;
  const float w1 = static_cast<float>(1.0 - s.beta1);
  const float b2 = static_cast<float>(s.beta2), w2 = static_cast<float>(1.0 - s.beta2);
  adamw_kernel<<<blocks_for(n), 256, 0, stream_>>>(param, grad, m, v, n, w1, b2, w2, s.eps,
                                                    s.grad_scale, decay, step_size, bias2_sqrt);
  return launched("adamw_update");
}

Status CudaBackend::sgd_update(float* param, const float* grad, float* buf, int64_t n,
                               const SgdStep& s) {
  RA_CUDA_ENTRY();
  if (n <= 0) return Status::Ok();
  if (s.momentum != 0.0f && buf == nullptr)
    return InvalidArgument("sgd_update: momentum needs a state buffer");
  sgd_kernel<<<blocks_for(n), 256, 0, stream_>>>(param, grad, buf, n, s.lr, s.momentum, s.dampening,
                                                  s.weight_decay, s.nesterov, s.first, s.grad_scale);
  return launched("sgd_update");
}

// Deterministic: a fixed grid for a given n and GPU, blocks added in order.
Status CudaBackend::sum_squares(const float* x, int64_t n, double* host_out) {
  RA_CUDA_ENTRY();
  if (n <= 0) {
    *host_out = 0;
    return Status::Ok();
  }
  const unsigned blocks = blocks_for(n);
  void* tmp = nullptr;
  RA_RETURN_IF_ERROR(scratch((blocks + 1) * sizeof(double), &tmp));
  double* partial = static_cast<double*>(tmp);
  sum_squares_kernel<<<blocks, 256, 0, stream_>>>(x, n, partial);
  RA_RETURN_IF_ERROR(launched("sum_squares"));
  sum_partials_kernel<<<1, 32, 0, stream_>>>(partial, blocks, partial + blocks);
  RA_RETURN_IF_ERROR(launched("sum_squares (total)"));
  RA_RETURN_IF_ERROR(from_cuda(cudaMemcpyAsync(host_out, partial + blocks, sizeof(double),
                                               cudaMemcpyDeviceToHost, stream_),
                               "cudaMemcpyAsync (sum_squares)"));
  return from_cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize (sum_squares)");
}

}  // namespace repadapter
