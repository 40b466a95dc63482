// GELU, exact erf form, as cpu/gelu.cc. erff and expf are CUDA's accurate versions (≤ 2 ulp),
// never the __expf fast intrinsics; the __f*_rn intrinsics keep the CPU's order without FMA.
#include "../core/bf16.h"
#include "common.cuh"

namespace repadapter {
namespace {

// X, Y: float (float32) or uint16_t (bf16: widened exactly on the way in, rounded to nearest
// even on the way out).
__device__ __forceinline__ float widen(float v) { return v; }
__device__ __forceinline__ float widen(uint16_t v) { return bf16_to_float(v); }
__device__ __forceinline__ void store(float* y, float v) { *y = v; }
__device__ __forceinline__ void store(uint16_t* y, float v) { *y = bf16_from_float(v); }

template <typename X, typename Y>
__global__ void gelu_forward_kernel(const X* x, Y* y, int64_t n) {
  RA_GRID_LOOP(i, n) {
    const float v = widen(x[i]);
    store(y + i, __fmul_rn(__fmul_rn(0.5f, v), __fadd_rn(1.0f, erff(__fmul_rn(v, 0.70710678118654752f)))));
  }
}

// d/dx [x·Φ(x)] = Φ(x) + x·φ(x); d holds dy on entry and dx on return.
// dy and dx: float32 (in place) or bf16.
template <typename X, typename G>
__global__ void gelu_backward_kernel(const X* x, const G* dy, G* dx, int64_t n) {
  const float inv_sqrt_2pi = 0.3989422804014327f;
  RA_GRID_LOOP(i, n) {
    const float v = widen(x[i]);
    const float cdf = __fmul_rn(0.5f, __fadd_rn(1.0f, erff(__fmul_rn(v, 0.70710678118654752f))));
    const float pdf = __fmul_rn(inv_sqrt_2pi, expf(__fmul_rn(__fmul_rn(-0.5f, v), v)));
    store(dx + i, __fmul_rn(widen(dy[i]), __fadd_rn(cdf, __fmul_rn(v, pdf))));
  }
}

}  // namespace

Status CudaBackend::gelu_forward(const float* x, float* y, int64_t n) {
  RA_CUDA_ENTRY();
  if (n <= 0) return Status::Ok();
  gelu_forward_kernel<<<blocks_for(n), 256, 0, stream_>>>(x, y, n);
  return launched("gelu_forward");
}

Status CudaBackend::gelu_forward_bf16(const uint16_t* x, uint16_t* y, int64_t n) {
  RA_CUDA_ENTRY();
  if (n <= 0) return Status::Ok();
  gelu_forward_kernel<<<blocks_for(n), 256, 0, stream_>>>(x, y, n);
  return launched("gelu_forward (bf16)");
}

Status CudaBackend::gelu_backward(const float* x, float* d, int64_t n) {
  RA_CUDA_ENTRY();
  if (n <= 0) return Status::Ok();
  gelu_backward_kernel<<<blocks_for(n), 256, 0, stream_>>>(x, d, d, n);
  return launched("gelu_backward");
}

Status CudaBackend::gelu_backward_bf16(const uint16_t* x, float* d, int64_t n) {
  RA_CUDA_ENTRY();
  if (n <= 0) return Status::Ok();
  gelu_backward_kernel<<<blocks_for(n), 256, 0, stream_>>>(x, d, d, n);
  return launched("gelu_backward (bf16 input)");
}

Status CudaBackend::gelu_backward_bf16_grads(const uint16_t* x, const uint16_t* dy, uint16_t* dx,
                                             int64_t n) {
  RA_CUDA_ENTRY();
  if (n <= 0) return Status::Ok();
  gelu_backward_kernel<<<blocks_for(n), 256, 0, stream_>>>(x, dy, dx, n);
  return launched("gelu_backward (bf16 input and gradients)");
}

}  // namespace repadapter
