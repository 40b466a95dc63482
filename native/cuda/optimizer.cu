// Optimizer updates on the GPU, as cpu/optimizer.cc: one launch over every range of the flat
// parameter, gradient and state buffers, torch.optim's single-tensor arithmetic in the same
// order. Scalars that the CPU derives in double (Adam's bias corrections) are derived on the
// host here too, with the same expressions, once per range; the per-element formulas use the
// __f*_rn intrinsics (no FMA, IEEE sqrt and division), so an update is bit-identical to the CPU's.
//
// One launch, not one per range: parameter groups (no weight decay on biases and norms)
// alternate every tensor or two, so an adapter update has ~50 ranges of a few hundred values,
// where launches would cost more than the work. The ranges go to the device as a small table;
// each thread finds its range by binary search over the ranges' starts in the concatenated
// index space.
#include <cmath>
#include <vector>

#include "common.cuh"

namespace repadapter {
namespace {

// One range as the kernels see it: `start` in the concatenation of all ranges, `offset` in the
// flat buffers, and two per-range scalars (AdamW: step size, decay factor; SGD: lr, weight decay).
struct RangeJob {
  int64_t start, offset, n;
  float a, b;
};

__device__ __forceinline__ const RangeJob& find_range(const RangeJob* jobs, int64_t count,
                                                      int64_t j) {
  int64_t lo = 0, hi = count - 1;  // the last range whose start is ≤ j
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (jobs[mid].start <= j) lo = mid; else hi = mid - 1;
  }
  return jobs[lo];
}

__global__ void adamw_kernel(float* param, const float* grad, float* m, float* v,
                             const RangeJob* jobs, int64_t count, int64_t total, float w1, float b2,
                             float w2, float eps, float grad_scale, float bias2_sqrt) {
  RA_GRID_LOOP(j, total) {
    const RangeJob& r = find_range(jobs, count, j);
    const int64_t i = r.offset + (j - r.start);
    const float step_size = r.a, decay = r.b;
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

__global__ void sgd_kernel(float* param, const float* grad, float* buf, const RangeJob* jobs,
                           int64_t count, int64_t total, float momentum, float dampening,
                           bool nesterov, bool first, float grad_scale) {
  RA_GRID_LOOP(j, total) {
    const RangeJob& r = find_range(jobs, count, j);
    const int64_t i = r.offset + (j - r.start);
    const float lr = r.a, weight_decay = r.b;
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

// The ranges with their scalars, copied into device scratch; *total is Σ n. Empty ranges are
// dropped (the binary search needs strictly increasing starts).
Status CudaBackend::upload_ranges(const UpdateRange* ranges, int64_t count, bool adamw,
                                  double bias1, void** jobs_out, int64_t* jobs_count,
                                  int64_t* total) {
  std::vector<RangeJob> jobs;
  jobs.reserve(static_cast<size_t>(count));
  int64_t start = 0;
  for (int64_t r = 0; r < count; ++r) {
    const UpdateRange& u = ranges[r];
    if (u.n <= 0) continue;
    RangeJob job{start, u.offset, u.n, u.lr, u.weight_decay};
    if (adamw) {
      job.a = static_cast<float>(u.lr / bias1);       // step size, as the CPU computes it
      job.b = 1.0f - u.lr * u.weight_decay;           // decoupled weight decay factor
    }
    jobs.push_back(job);
    start += u.n;
  }
  *jobs_count = static_cast<int64_t>(jobs.size());
  *total = start;
  if (jobs.empty()) return Status::Ok();
  RA_RETURN_IF_ERROR(scratch(jobs.size() * sizeof(RangeJob), jobs_out));
  // From pageable memory the copy returns once `jobs` is staged, so the vector may go.
  return from_cuda(cudaMemcpyAsync(*jobs_out, jobs.data(), jobs.size() * sizeof(RangeJob),
                                   cudaMemcpyHostToDevice, stream_),
                   "cudaMemcpyAsync (optimizer ranges)");
}

Status CudaBackend::adamw_update(float* param, const float* grad, float* m, float* v,
                                 const UpdateRange* ranges, int64_t count, const AdamWStep& s) {
  RA_CUDA_ENTRY();
  // The CPU's scalars, computed the CPU's way (double bias corrections, as torch in Python).
  const double t = static_cast<double>(s.step);
  const double bias1 = 1.0 - std::pow(static_cast<double>(s.beta1), t);
  const double bias2 = 1.0 - std::pow(static_cast<double>(s.beta2), t);
  const float bias2_sqrt = static_cast<float>(std::sqrt(bias2));
  const float w1 = static_cast<float>(1.0 - s.beta1);
  const float b2 = static_cast<float>(s.beta2), w2 = static_cast<float>(1.0 - s.beta2);
  void* jobs = nullptr;
  int64_t jobs_count = 0, total = 0;
  RA_RETURN_IF_ERROR(upload_ranges(ranges, count, true, bias1, &jobs, &jobs_count, &total));
  if (total == 0) return Status::Ok();
  adamw_kernel<<<blocks_for(total), 256, 0, stream_>>>(param, grad, m, v,
                                                        static_cast<const RangeJob*>(jobs), jobs_count,
                                                        total, w1, b2, w2, s.eps, s.grad_scale,
                                                        bias2_sqrt);
  return launched("adamw_update");
}

Status CudaBackend::sgd_update(float* param, const float* grad, float* buf,
                               const UpdateRange* ranges, int64_t count, const SgdStep& s) {
  RA_CUDA_ENTRY();
  if (s.momentum != 0.0f && buf == nullptr)
    return InvalidArgument("sgd_update: momentum needs a state buffer");
  void* jobs = nullptr;
  int64_t jobs_count = 0, total = 0;
  RA_RETURN_IF_ERROR(upload_ranges(ranges, count, false, 1.0, &jobs, &jobs_count, &total));
  if (total == 0) return Status::Ok();
  sgd_kernel<<<blocks_for(total), 256, 0, stream_>>>(param, grad, buf,
                                                      static_cast<const RangeJob*>(jobs), jobs_count,
                                                      total, s.momentum, s.dampening, s.nesterov,
                                                      s.first, s.grad_scale);
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
