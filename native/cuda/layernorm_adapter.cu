// LayerNorm and the RepAdapter that reads it on the GPU: one warp per row, one launch where the
// composed ops take four (layernorm, a gemm with N = R = 8 columns — a shape cuBLAS serves
// poorly —, dropout, the up-projection) and three round trips of [M, D] through memory.
//
// Each piece keeps the arithmetic of the CUDA op it stands for: layernorm.cu's statistics in
// double and its no-FMA per-element formula, adapter.cu's dropout mask and scaling, and
// adapter_up_forward_kernel's float order for u. The R dot products are warp reductions in
// double, so z differs from the composed path only by the float rounding of cuBLAS's sums.
#include "../core/rng.h"
#include "../core/bf16.h"
#include "common.cuh"

namespace repadapter {
namespace {

constexpr int kWarpsPerBlock = 4;
constexpr size_t kStaticSharedLimit = 48 * 1024;  // what a launch gets without an opt-in

struct Args {
  const float *x, *ln_w, *ln_b, *A, *a_bias, *up_w, *up_b;
  float *a, *z, *u, *mean, *rstd;
  uint16_t* u16;  // in u's place where given: u rounded to bf16
  int64_t ldx, D, R, G;
  float eps, scale, p, keep_scale;
  uint64_t seed, site;
  const uint64_t* step_key;  // read on the device: a recorded step draws the replayed step's masks
};

// Shared memory holds D + R floats per warp: the row (x, then a in its place) and its z.
// A lane only ever touches row[d] for its own d = lane + 32·i, so the row needs no barrier;
// z is written by lane 0 and read by all lanes, hence the two __syncwarp.
__global__ void layernorm_adapter_kernel(Args f, int64_t M) {
  extern __shared__ float shared[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps_per_block = blockDim.x >> 5;
  const int64_t D = f.D, R = f.R, Dg = D / f.G, Rg = R / f.G;
  float* row = shared + warp * (D + R);
  float* zs = row + D;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * warps_per_block;
  const uint64_t stream = f.p > 0.0f ? *f.step_key ^ f.site : 0;
  for (int64_t m = static_cast<int64_t>(blockIdx.x) * warps_per_block + warp; m < M; m += warps) {
    const float* xr = f.x + m * f.ldx;
    for (int64_t d = lane; d < D; d += 32) row[d] = xr[d];
    float muf, r;
    cuda_detail::warp_row_stats(row, D, f.eps, lane, &muf, &r);
    float* ar = f.a ? f.a + m * D : nullptr;
    for (int64_t d = lane; d < D; d += 32) {
      const float v = cuda_detail::layernorm_value(row[d], muf, r, f.ln_w[d], f.ln_b[d]);
      row[d] = v;
      if (ar) ar[d] = v;
    }
    if (lane == 0) {
      if (f.mean) f.mean[m] = muf;
      if (f.rstd) f.rstd[m] = r;
    }

    // The butterfly sum leaves the same value in every lane, so every lane holds z[m, j].
    for (int64_t j = 0; j < R; ++j) {
      const float* Aj = f.A + j * D;
      double dot = 0;
      for (int64_t d = lane; d < D; d += 32) dot += static_cast<double>(row[d]) * Aj[d];
      dot = cuda_detail::warp_sum(dot);
      float v = __fadd_rn(static_cast<float>(dot), f.a_bias[j]);
      if (f.p > 0.0f)
        v = uniform01(f.seed, stream, static_cast<uint64_t>(m * R + j)) >= f.p ? __fmul_rn(v, f.keep_scale) : 0.0f;
      if (lane == 0) {
        zs[j] = v;
        f.z[m * R + j] = v;
      }
    }
    __syncwarp();

    for (int64_t d = lane; d < D; d += 32) {
      const float* zg = zs + (d / Dg) * Rg;
      const float* wr = f.up_w + d * Rg;
      float acc = f.up_b[d];
      for (int64_t j = 0; j < Rg; ++j) acc = __fadd_rn(acc, __fmul_rn(wr[j], zg[j]));
      const float v = __fadd_rn(row[d], __fmul_rn(f.scale, acc));
      if (f.u16)
        f.u16[m * D + d] = bf16_from_float(v);
      else
        f.u[m * D + d] = v;
    }
    __syncwarp();  // lane 0 rewrites zs for the warp's next row
  }
}

}  // namespace

Status CudaBackend::layernorm_adapter_forward(const float* x, int64_t ldx, const float* ln_w,
                                              const float* ln_b, float eps, const float* A,
                                              const float* a_bias, const float* up_w,
                                              const float* up_b, float scale, float p,
                                              uint64_t seed, const uint64_t* step_key,
                                              uint64_t site, float* a, float* z, float* u,
                                              uint16_t* u_bf16, float* mean, float* rstd,
                                              int64_t M, int64_t D, int64_t R, int64_t G) {
  RA_RETURN_IF_ERROR(one_output(u, u_bf16, true, "layernorm_adapter_forward: exactly one of u and u_bf16"));
  RA_CUDA_ENTRY();
  if (G <= 0 || D % G != 0 || R % G != 0)
    return InvalidArgument("layernorm_adapter_forward: groups must divide D and R");
  if (ldx < D) return InvalidArgument("layernorm_adapter_forward: ldx is smaller than D");
  if (M <= 0 || D <= 0) return Status::Ok();
  const size_t row_bytes = static_cast<size_t>(D + R) * sizeof(float);
  const int warps_per_block =
      static_cast<int>(std::min<size_t>(kWarpsPerBlock, kStaticSharedLimit / row_bytes));
  if (warps_per_block < 1)
    return InvalidArgument("layernorm_adapter_forward: a row of D = " + std::to_string(D) +
                           " floats does not fit in a block's shared memory");
  const int64_t needed = (M + warps_per_block - 1) / warps_per_block;
  const unsigned blocks = static_cast<unsigned>(
      std::max<int64_t>(1, std::min<int64_t>(needed, static_cast<int64_t>(sm_count()) * 16)));
  const Args f{x, ln_w, ln_b, A, a_bias, up_w, up_b, a, z, u, mean, rstd, u_bf16, ldx, D, R, G,
               eps, scale, p, p > 0.0f ? 1.0f / (1.0f - p) : 1.0f, seed, site, step_key};
  layernorm_adapter_kernel<<<blocks, 32 * warps_per_block, warps_per_block * row_bytes, stream_>>>(f, M);
  return launched("layernorm_adapter_forward");
}

}  // namespace repadapter
