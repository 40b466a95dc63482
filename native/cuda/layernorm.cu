// LayerNorm over the last dimension on the GPU, mirroring cpu/layernorm.cc: statistics in double
// (two passes), the per-element formulas in float with the CPU's evaluation order. The __f*_rn
// intrinsics keep nvcc from fusing a multiply and an add into one FMA, which the CPU (x86-64
// without -mfma) never does, so a row's y is bit-identical to the CPU's whenever the double
// statistics round to the same floats.
#include <cmath>

#include "../core/bf16.h"
#include "common.cuh"

namespace repadapter {
namespace {

constexpr int kRowsPerBlock = 8;  // one warp per row

// y or, where given, y16 (the row rounded to bf16).
__global__ void layernorm_forward_kernel(const float* x, int64_t ldx, const float* w,
                                         const float* b, float* y, uint16_t* y16, int64_t ldy,
                                         float* mean, float* rstd, int64_t M, int64_t D, float eps) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kRowsPerBlock;
  for (int64_t m = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + (threadIdx.x >> 5); m < M;
       m += warps) {
    const float* xr = x + m * ldx;
    float muf, r;
    cuda_detail::warp_row_stats(xr, D, eps, lane, &muf, &r);
    for (int64_t d = lane; d < D; d += 32) {
      const float v = cuda_detail::layernorm_value(xr[d], muf, r, w[d], b[d]);
      if (y16)
        y16[m * ldy + d] = bf16_from_float(v);
      else
        y[m * ldy + d] = v;
    }
    if (lane == 0) {
      if (mean) mean[m] = muf;
      if (rstd) rstd[m] = r;
    }
  }
}

// dx (ADDS) = r · (g − mean(g) − x̂ · mean(g ⊙ x̂)), g = dy ⊙ w, x̂ = (x − μ)·r.
__global__ void layernorm_backward_dx_kernel(const float* dy, int64_t ldy, const float* x,
                                             int64_t ldx, const float* w, const float* mean,
                                             const float* rstd, float* dx, int64_t M, int64_t D) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kRowsPerBlock;
  for (int64_t m = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + (threadIdx.x >> 5); m < M;
       m += warps) {
    const float* xr = x + m * ldx;
    const float* gr = dy + m * ldy;
    const float mu = mean[m], r = rstd[m];
    double sum_g = 0, sum_gx = 0;
    for (int64_t d = lane; d < D; d += 32) {
      const float g = __fmul_rn(gr[d], w[d]);
      sum_g += g;
      sum_gx += __fmul_rn(g, __fmul_rn(__fsub_rn(xr[d], mu), r));
    }
    sum_g = cuda_detail::warp_sum(sum_g);
    sum_gx = cuda_detail::warp_sum(sum_gx);
    const float mg = static_cast<float>(sum_g / D), mgx = static_cast<float>(sum_gx / D);
    float* out = dx + m * ldx;
    for (int64_t d = lane; d < D; d += 32) {
      const float xhat = __fmul_rn(__fsub_rn(xr[d], mu), r);
      const float inner = __fsub_rn(__fsub_rn(__fmul_rn(gr[d], w[d]), mg), __fmul_rn(xhat, mgx));
      out[d] = __fadd_rn(out[d], __fmul_rn(r, inner));
    }
  }
}

struct NormWeightColumn {  // dw[d] sums dy · x̂ down column d
  const float *dy, *x, *mean, *rstd;
  int64_t ldy, ldx;
  __device__ double operator()(int64_t m, int64_t d) const {
    return __fmul_rn(dy[m * ldy + d], __fmul_rn(__fsub_rn(x[m * ldx + d], mean[m]), rstd[m]));
  }
};

struct NormBiasColumn {  // db[d] sums dy down column d
  const float* dy;
  int64_t ldy;
  __device__ double operator()(int64_t m, int64_t d) const { return dy[m * ldy + d]; }
};

unsigned row_blocks(const CudaBackend& be, int64_t M) {
  const int64_t needed = (M + kRowsPerBlock - 1) / kRowsPerBlock;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(needed, be.sm_count() * 16)));
}

}  // namespace

Status CudaBackend::layernorm_forward(const float* x, int64_t ldx, const float* w,
                                      const float* b, float* y, uint16_t* y_bf16, int64_t ldy,
                                      float* mean, float* rstd, int64_t M, int64_t D, float eps) {
  RA_RETURN_IF_ERROR(one_output(y, y_bf16, true, "layernorm_forward: exactly one of y and y_bf16"));
  RA_CUDA_ENTRY();
  if (M <= 0 || D <= 0) return Status::Ok();
  layernorm_forward_kernel<<<row_blocks(*this, M), 32 * kRowsPerBlock, 0, stream_>>>(
      x, ldx, w, b, y, y_bf16, ldy, mean, rstd, M, D, eps);
  return launched("layernorm_forward");
}

Status CudaBackend::layernorm_backward(const float* dy, int64_t ldy, const float* x, int64_t ldx,
                                       const float* w, const float* mean, const float* rstd,
                                       float* dx, float* dw, float* db, int64_t M, int64_t D) {
  RA_CUDA_ENTRY();
  if (M <= 0 || D <= 0) return Status::Ok();
  if (dx) {
    layernorm_backward_dx_kernel<<<row_blocks(*this, M), 32 * kRowsPerBlock, 0, stream_>>>(
        dy, ldy, x, ldx, w, mean, rstd, dx, M, D);
    RA_RETURN_IF_ERROR(launched("layernorm_backward"));
  }
  RA_RETURN_IF_ERROR(cuda_detail::column_sums(*this, "layernorm_backward (dw)",
                                              NormWeightColumn{dy, x, mean, rstd, ldy, ldx}, M, D,
                                              1.0, dw));
  return cuda_detail::column_sums(*this, "layernorm_backward (db)", NormBiasColumn{dy, ldy}, M, D,
                                  1.0, db);
}

}  // namespace repadapter
