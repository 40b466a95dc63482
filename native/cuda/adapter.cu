// RepAdapter on the GPU, as cpu/adapter.cc: dropout with the counter-based mask of core/rng.h
// (bit-identical to the CPU's: the same integer hash, the same float comparison), the
// group-sparse up-projection and its backward, and the fold, in float64 on the device.
#include "../core/rng.h"
#include "common.cuh"

namespace repadapter {
namespace {

// z ← mask ? z · keep_scale : 0, mask = uniform01(seed, stream, i) ≥ p. keep_scale is computed
// on the host exactly as the CPU computes it.
__global__ void dropout_kernel(float* z, int64_t n, float p, float keep_scale, uint64_t seed,
                               const uint64_t* step_key, uint64_t site) {
  const uint64_t stream = *step_key ^ site;
  RA_GRID_LOOP(i, n) {
    z[i] = uniform01(seed, stream, static_cast<uint64_t>(i)) >= p ? __fmul_rn(z[i], keep_scale) : 0.0f;
  }
}

// y[m, d] = x[m, d] + s · (b[d] + Σ_j w[d, j] · z[m, k·Rg + j]), k = d / Dg; the CPU's float
// order, no FMA: bit-identical. x may equal y (each thread reads then writes one element).
__global__ void adapter_up_forward_kernel(const float* x, const float* z, const float* w,
                                          const float* b, float* y, int64_t M, int64_t D,
                                          int64_t R, int64_t Dg, int64_t Rg, float scale) {
  RA_GRID_LOOP(i, M * D) {
    const int64_t m = i / D, d = i % D;
    const float* zg = z + m * R + (d / Dg) * Rg;
    const float* wr = w + d * Rg;
    float acc = b[d];
    for (int64_t j = 0; j < Rg; ++j) acc = __fadd_rn(acc, __fmul_rn(wr[j], zg[j]));
    y[i] = __fadd_rn(x[i], __fmul_rn(scale, acc));
  }
}

// dz[m, r] = s · Σ_{d in group k} dy[m, d] · w[d, j], r = k·Rg + j: one warp per (m, r), lanes
// over the group's D/G columns (contiguous in dy), summed in double (the CPU sums in float; the
// difference is the CPU's rounding, well inside the tolerance).
__global__ void adapter_dz_kernel(const float* dy, const float* w, float* dz, int64_t M,
                                  int64_t D, int64_t R, int64_t Dg, int64_t Rg, float scale) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x >> 5);
  for (int64_t wi = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; wi < M * R;
       wi += warps) {
    const int64_t m = wi / R, r = wi % R, k = r / Rg, j = r % Rg;
    const float* gr = dy + m * D;
    double acc = 0;
    for (int64_t d = k * Dg + lane; d < (k + 1) * Dg; d += 32)
      acc += static_cast<double>(gr[d]) * w[d * Rg + j];
    acc = cuda_detail::warp_sum(acc);
    if (lane == 0) dz[wi] = __fmul_rn(static_cast<float>(acc), scale);
  }
}

struct UpWeightColumn {  // column c = d·Rg + j of dw: Σ_m dy[m, d] · z[m, k·Rg + j]
  const float *dy, *z;
  int64_t D, R, Dg, Rg;
  __device__ double operator()(int64_t m, int64_t c) const {
    const int64_t d = c / Rg, j = c % Rg;
    return static_cast<double>(dy[m * D + d]) * z[m * R + (d / Dg) * Rg + j];
  }
};

struct UpBiasColumn {
  const float* dy;
  int64_t D;
  __device__ double operator()(int64_t m, int64_t d) const { return dy[m * D + d]; }
};

// ---- the fold, in double ----
// u[d] = b[d] + Σ_j w[d, j] · a[k·Rg + j]: the adapter's constant output shift.
__global__ void fold_shift_kernel(const float* a, const float* w, const float* b, double* u,
                                  int64_t D, int64_t Dg, int64_t Rg) {
  RA_GRID_LOOP(d, D) {
    const int64_t k = d / Dg;
    double acc = b[d];
    for (int64_t j = 0; j < Rg; ++j) acc += static_cast<double>(w[d * Rg + j]) * a[k * Rg + j];
    u[d] = acc;
  }
}

// One block per row o of W: wb[o, r] = (W B̂)[o, r] for r < R, and wb[o, R] = W[o] · u, all from
// the unfolded W (the update kernel runs after this one has finished, in stream order).
__global__ void fold_row_products_kernel(const float* W, const float* w, const double* u,
                                         double* wb, int64_t O, int64_t D, int64_t R, int64_t Dg,
                                         int64_t Rg) {
  __shared__ double shared[32];
  for (int64_t o = blockIdx.x; o < O; o += gridDim.x) {
    const float* Wr = W + o * D;
    for (int64_t r = 0; r < R; ++r) {
      const int64_t k = r / Rg, j = r % Rg;
      double acc = 0;
      for (int64_t d = k * Dg + threadIdx.x; d < (k + 1) * Dg; d += blockDim.x)
        acc += static_cast<double>(Wr[d]) * w[d * Rg + j];
      acc = cuda_detail::block_sum(acc, shared);
      if (threadIdx.x == 0) wb[o * (R + 1) + r] = acc;
    }
    double acc = 0;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) acc += static_cast<double>(Wr[d]) * u[d];
    acc = cuda_detail::block_sum(acc, shared);
    if (threadIdx.x == 0) wb[o * (R + 1) + R] = acc;
  }
}

// W[o, d] ← W[o, d] + s · Σ_r wb[o, r] · A[r, d];  c[o] ← c[o] + s · wb[o, R].
__global__ void fold_update_kernel(float* W, float* c, const float* A, const double* wb,
                                   int64_t O, int64_t D, int64_t R, float scale) {
  RA_GRID_LOOP(i, O * D) {
    const int64_t o = i / D, d = i % D;
    const double* wr = wb + o * (R + 1);
    double acc = 0;
    for (int64_t r = 0; r < R; ++r) acc += wr[r] * A[r * D + d];
    W[i] = static_cast<float>(W[i] + scale * acc);
    if (d == 0) c[o] = static_cast<float>(c[o] + scale * wr[R]);
  }
}

}  // namespace

// The step key is read on the device, so a recorded step draws the replayed step's masks.
Status CudaBackend::dropout_forward(float* z, int64_t n, float p, uint64_t seed,
                                    const uint64_t* step_key, uint64_t site) {
  if (p <= 0.0f || n <= 0) return Status::Ok();
  RA_CUDA_ENTRY();
  const float keep_scale = 1.0f / (1.0f - p);
  dropout_kernel<<<blocks_for(n), 256, 0, stream_>>>(z, n, p, keep_scale, seed, step_key, site);
  return launched("dropout");
}

// The mask is recomputed from (seed, step key, site, i), never stored.
Status CudaBackend::dropout_backward(float* dz, int64_t n, float p, uint64_t seed,
                                     const uint64_t* step_key, uint64_t site) {
  return dropout_forward(dz, n, p, seed, step_key, site);
}

Status CudaBackend::adapter_up_forward(const float* x, const float* z, const float* w,
                                       const float* b, float* y, int64_t M, int64_t D, int64_t R,
                                       int64_t G, float scale) {
  RA_CUDA_ENTRY();
  if (M <= 0 || D <= 0) return Status::Ok();
  if (G <= 0 || D % G != 0 || R % G != 0)
    return InvalidArgument("adapter_up_forward: groups must divide D and R");
  adapter_up_forward_kernel<<<blocks_for(M * D), 256, 0, stream_>>>(x, z, w, b, y, M, D, R, D / G,
                                                                      R / G, scale);
  return launched("adapter_up_forward");
}

Status CudaBackend::adapter_up_backward(const float* dy, const float* z, const float* w, float* dz,
                                        float* dw, float* db, int64_t M, int64_t D, int64_t R,
                                        int64_t G, float scale) {
  RA_CUDA_ENTRY();
  if (M <= 0 || D <= 0) return Status::Ok();
  if (G <= 0 || D % G != 0 || R % G != 0)
    return InvalidArgument("adapter_up_backward: groups must divide D and R");
  const int64_t Dg = D / G, Rg = R / G;
  if (dz && R > 0) {
    const int64_t warps = M * R;
    const unsigned blocks = static_cast<unsigned>(
        std::max<int64_t>(1, std::min<int64_t>((warps + 7) / 8, static_cast<int64_t>(sm_count()) * 32)));
    adapter_dz_kernel<<<blocks, 256, 0, stream_>>>(dy, w, dz, M, D, R, Dg, Rg, scale);
    RA_RETURN_IF_ERROR(launched("adapter_up_backward (dz)"));
  }
  RA_RETURN_IF_ERROR(cuda_detail::column_sums(*this, "adapter_up_backward (dw)",
                                              UpWeightColumn{dy, z, D, R, Dg, Rg}, M, D * Rg,
                                              static_cast<double>(scale), dw));
  return cuda_detail::column_sums(*this, "adapter_up_backward (db)", UpBiasColumn{dy, D}, M, D,
                                  static_cast<double>(scale), db);
}

// In float64 throughout, as on the CPU, so the folded weights are the float32 rounding of the
// exact ones: W' = W + s·(W B̂) A, c' = c + s·W(B̂a + b). Low rank: no D×D matrix.
Status CudaBackend::adapter_fold(float* W, float* c, const float* A, const float* a,
                                 const float* w, const float* b, int64_t O, int64_t D, int64_t R,
                                 int64_t G, float scale) {
  RA_CUDA_ENTRY();
  if (O <= 0 || D <= 0) return Status::Ok();
  if (G <= 0 || D % G != 0 || R % G != 0)
    return InvalidArgument("adapter_fold: groups must divide D and R");
  const int64_t Dg = D / G, Rg = R / G;
  void* tmp = nullptr;
  RA_RETURN_IF_ERROR(scratch(static_cast<size_t>(D + O * (R + 1)) * sizeof(double), &tmp));
  double* u = static_cast<double*>(tmp);
  double* wb = u + D;
  fold_shift_kernel<<<blocks_for(D), 256, 0, stream_>>>(a, w, b, u, D, Dg, Rg);
  RA_RETURN_IF_ERROR(launched("adapter_fold (shift)"));
  const unsigned row_blocks =
      static_cast<unsigned>(std::min<int64_t>(O, static_cast<int64_t>(sm_count()) * 8));
  fold_row_products_kernel<<<row_blocks, 256, 0, stream_>>>(W, w, u, wb, O, D, R, Dg, Rg);
  RA_RETURN_IF_ERROR(launched("adapter_fold (row products)"));
  fold_update_kernel<<<blocks_for(O * D), 256, 0, stream_>>>(W, c, A, wb, O, D, R, scale);
  return launched("adapter_fold (update)");
}

}  // namespace repadapter
