// Softmax cross-entropy, mean over the batch, as cpu/loss.cc: the same target distribution t
// (label smoothing ε: t = (1−ε)·onehot + ε/C, or soft targets), loss = −Σ_c t_c log p_c, and
// d loss / d logit_c = ((Σ t) p_c − t_c) / B, every quantity in double as on the CPU.
//
// One block per row, then one thread adds the rows' losses in order (deterministic). Integer
// labels are checked on the device; a bad one is reported as the CPU reports it (the first bad
// sample), which costs one wait for the stream — the caller downloads the loss next anyway —
// except while recording a graph, which cannot wait.
#include <string>

#include "common.cuh"

namespace repadapter {
namespace {

constexpr int kThreads = 256;

__global__ void cross_entropy_rows_kernel(const float* logits, const int32_t* labels,
                                          const float* soft, float smoothing, float* d_logits,
                                          double* row_loss, int* bad, int64_t B, int64_t C) {
  __shared__ double shared[32];
  __shared__ float shared_max[32];
  for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {
    const float* row = logits + b * C;
    int64_t y = -1;
    if (labels) {
      y = labels[b];
      if (y < 0 || y >= C) {  // uniform across the block: no thread reaches a barrier alone
        // The first bad sample wins: max of B − b is the min of b.
        if (threadIdx.x == 0) atomicMax(bad, static_cast<int>(B - b));
        continue;
      }
    }
    float mxf = -INFINITY;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) mxf = fmaxf(mxf, row[c]);
    const double mx = cuda_detail::block_max(mxf, shared_max);
    double sum = 0;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) sum += exp(row[c] - mx);
    const double lse = mx + log(cuda_detail::block_sum(sum, shared));
    // The CPU's t: ε/C in float (float / int64 converts C to float), then (1 − ε) in double.
    const double t_smooth = static_cast<double>(smoothing / static_cast<float>(C));
    auto target = [&](int64_t c) -> double {
      if (!labels) return soft[b * C + c];
      return c == y ? t_smooth + (1.0 - static_cast<double>(smoothing)) : t_smooth;
    };
    double loss = 0, t_sum = 0;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      const double t = target(c);
      loss -= t * (row[c] - lse);
      t_sum += t;
    }
    loss = cuda_detail::block_sum(loss, shared);
    t_sum = cuda_detail::block_sum(t_sum, shared);
    if (d_logits)
      for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
        d_logits[b * C + c] =
            static_cast<float>((t_sum * exp(row[c] - lse) - target(c)) / static_cast<double>(B));
    if (threadIdx.x == 0) row_loss[b] = loss;
  }
}

__global__ void cross_entropy_total_kernel(const double* row_loss, const int* bad, float* loss,
                                           int64_t B) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  if (*bad != 0) {  // what a recording, which cannot report the label, leaves behind
    *loss = __int_as_float(0x7fc00000);
    return;
  }
  double total = 0;
  for (int64_t b = 0; b < B; ++b) total += row_loss[b];
  *loss = static_cast<float>(total / static_cast<double>(B));
}

}  // namespace

Status CudaBackend::cross_entropy(const float* logits, const int32_t* labels,
                                  const float* soft_targets, float smoothing, float* loss,
                                  float* d_logits, int64_t B, int64_t C) {
  if ((labels == nullptr) == (soft_targets == nullptr))
    return InvalidArgument("cross_entropy needs exactly one of labels and soft targets");
  if (B <= 0 || C <= 0) return InvalidArgument("cross_entropy needs at least one row and one class");
  RA_CUDA_ENTRY();
  void* tmp = nullptr;
  RA_RETURN_IF_ERROR(scratch(static_cast<size_t>(B) * sizeof(double) + sizeof(int), &tmp));
  double* row_loss = static_cast<double*>(tmp);
  int* bad = reinterpret_cast<int*>(row_loss + B);
  RA_RETURN_IF_ERROR(from_cuda(cudaMemsetAsync(bad, 0, sizeof(int), stream_), "cudaMemsetAsync (cross_entropy)"));
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(B, static_cast<int64_t>(sm_count()) * 8));
  cross_entropy_rows_kernel<<<blocks, kThreads, 0, stream_>>>(logits, labels, soft_targets, smoothing,
                                                              d_logits, row_loss, bad, B, C);
  RA_RETURN_IF_ERROR(launched("cross_entropy"));
  cross_entropy_total_kernel<<<1, 32, 0, stream_>>>(row_loss, bad, loss, B);
  RA_RETURN_IF_ERROR(launched("cross_entropy (total)"));
  // A recording cannot wait for the check: there the caller has checked the labels on the host
  // (ViT::backward does), and a bad one would leave a NaN loss.
  if (!labels || capturing_) return Status::Ok();
  int flag = 0;
  RA_RETURN_IF_ERROR(from_cuda(cudaMemcpyAsync(&flag, bad, sizeof(int), cudaMemcpyDeviceToHost, stream_),
                               "cudaMemcpyAsync (cross_entropy label check)"));
  RA_RETURN_IF_ERROR(from_cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize (cross_entropy)"));
  if (flag == 0) return Status::Ok();
  const int64_t b = B - flag;
  int32_t y = 0;
  RA_RETURN_IF_ERROR(from_cuda(cudaMemcpyAsync(&y, labels + b, sizeof(int32_t), cudaMemcpyDeviceToHost, stream_),
                               "cudaMemcpyAsync (cross_entropy bad label)"));
  RA_RETURN_IF_ERROR(from_cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize (cross_entropy)"));
  return OutOfRange("label " + std::to_string(y) + " of sample " + std::to_string(b) +
                    " is outside [0, " + std::to_string(C) + ")");
}

}  // namespace repadapter
