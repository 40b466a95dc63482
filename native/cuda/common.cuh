// Helpers shared by the CUDA op files: grid-stride loops, warp reductions, and the
// deterministic column sum that every "gradient of a broadcast" uses (bias, LayerNorm weights,
// position embedding, adapter up-projection).
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "cuda_backend.h"

namespace repadapter {
namespace cuda_detail {

// for (i = this thread; i < n; i += all threads): 64-bit indices, any grid size.
#define RA_GRID_LOOP(i, n)                                                         \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

__device__ __forceinline__ double warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum of v over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
// `shared` holds 32 doubles. Ends with a barrier, so it may be called again at once.
__device__ __forceinline__ double block_sum(double v, double* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  double t = 0;
  // Every warp adds the per-warp sums in the same order: all threads see the same value.
  for (int w = 0; w < warps; ++w) t += shared[w];
  __syncthreads();
  return t;
}

// ---- LayerNorm rows, one warp per row (layernorm.cu and the fused layernorm_adapter.cu) -------
// Mean and 1/√(var + eps) of x[0, D), lane reading x[lane + 32·i]: two passes in double, as the
// CPU, rounded to float once. Every lane gets both values.
__device__ __forceinline__ void warp_row_stats(const float* x, int64_t D, float eps, int lane,
                                               float* mean, float* rstd) {
  double sum = 0;
  for (int64_t d = lane; d < D; d += 32) sum += x[d];
  const double mu = warp_sum(sum) / D;
  double sq = 0;
  for (int64_t d = lane; d < D; d += 32) {
    const double t = x[d] - mu;
    sq += t * t;
  }
  sq = warp_sum(sq);
  *rstd = static_cast<float>(1.0 / sqrt(sq / D + static_cast<double>(eps)));
  *mean = static_cast<float>(mu);
}

// (x − μ)·r·w + b in the CPU's order, without FMA contraction.
__device__ __forceinline__ float layernorm_value(float x, float mu, float r, float w, float b) {
  return __fadd_rn(__fmul_rn(__fmul_rn(__fsub_rn(x, mu), r), w), b);
}

// Maximum of v over the block, like block_sum; `shared` holds 32 floats.
__device__ __forceinline__ float block_max(float v, float* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_max(v);
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  float t = shared[0];
  for (int w = 1; w < warps; ++w) t = fmaxf(t, shared[w]);
  __syncthreads();
  return t;
}

// ---- column sums ---------------------------------------------------------------------------
// out[col] += (float)(factor · Σ_m f(m, col)) for col < cols, m < rows, accumulated in double
// as the CPU does. Deterministic: rows are cut into fixed chunks (a function of the shape and
// the GPU's multiprocessor count only), each chunk's partial sum is written to scratch, and a
// second kernel adds the chunks in order. No atomics.
constexpr int kColumnThreadsX = 32, kColumnThreadsY = 8;

template <class F>
__global__ void column_partial_kernel(F f, int64_t rows, int64_t cols, int64_t rows_per_chunk,
                                      double* partial) {
  __shared__ double s[kColumnThreadsY][kColumnThreadsX + 1];
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kColumnThreadsX + threadIdx.x;
  const int64_t chunk = blockIdx.y;
  const int64_t r0 = chunk * rows_per_chunk;
  const int64_t r1 = r0 + rows_per_chunk < rows ? r0 + rows_per_chunk : rows;
  double acc = 0;
  if (col < cols)
    for (int64_t m = r0 + threadIdx.y; m < r1; m += kColumnThreadsY) acc += f(m, col);
  s[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && col < cols) {
    double t = 0;
    for (int k = 0; k < kColumnThreadsY; ++k) t += s[k][threadIdx.x];
    partial[chunk * cols + col] = t;
  }
}

// Each TU that sums columns gets its own copy (static): no relocatable device code needed.
static __global__ void column_finish_kernel(const double* partial, int64_t chunks, int64_t cols,
                                            double factor, float* out) {
  RA_GRID_LOOP(col, cols) {
    double t = 0;
    for (int64_t c = 0; c < chunks; ++c) t += partial[c * cols + col];
    out[col] += static_cast<float>(factor * t);
  }
}

// Launches the two kernels; `name` is the op, for error messages.
template <class F>
Status column_sums(CudaBackend& be, const char* name, F f, int64_t rows, int64_t cols,
                   double factor, float* out) {
  if (rows <= 0 || cols <= 0 || out == nullptr) return Status::Ok();
  const int64_t col_blocks = (cols + kColumnThreadsX - 1) / kColumnThreadsX;
  // About four blocks per multiprocessor in all, each chunk at least 32 rows.
  int64_t chunks = std::max<int64_t>(1, (4 * be.sm_count() + col_blocks - 1) / col_blocks);
  chunks = std::min<int64_t>(chunks, std::max<int64_t>(1, (rows + 31) / 32));
  chunks = std::min<int64_t>(chunks, 65535);  // gridDim.y limit
  const int64_t rows_per_chunk = (rows + chunks - 1) / chunks;
  chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;
  void* scratch = nullptr;
  RA_RETURN_IF_ERROR(be.scratch(static_cast<size_t>(chunks * cols) * sizeof(double), &scratch));
  double* partial = static_cast<double*>(scratch);
  dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(chunks));
  dim3 block(kColumnThreadsX, kColumnThreadsY);
  column_partial_kernel<<<grid, block, 0, be.stream()>>>(f, rows, cols, rows_per_chunk, partial);
  RA_RETURN_IF_ERROR(be.launched(name));
  column_finish_kernel<<<be.blocks_for(cols), 256, 0, be.stream()>>>(partial, chunks, cols,
                                                                      factor, out);
  return be.launched(name);
}

}  // namespace cuda_detail
}  // namespace repadapter
