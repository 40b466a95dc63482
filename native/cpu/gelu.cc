// GELU in its exact form, x·Φ(x) with the erf-based normal CDF (timm's nn.GELU default), not
// the tanh approximation: the two differ by up to 1e-3, far above our tolerances.
#include <algorithm>

#include "../core/bf16.h"
#include "cpu_backend.h"
#include "vmath.h"

namespace repadapter {
namespace {

constexpr float kInvSqrt2 = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;
constexpr int64_t kChunk = 4096;

RA_VECTOR_CLONES void gelu_chunk(const float* x, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = 0.5f * x[i] * (1.0f + vmath::erf(x[i] * kInvSqrt2));
}

// d/dx [x·Φ(x)] = Φ(x) + x·φ(x).
RA_VECTOR_CLONES void gelu_backward_chunk(const float* x, float* d, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    const float cdf = 0.5f * (1.0f + vmath::erf(v * kInvSqrt2));
    const float pdf = kInvSqrt2Pi * vmath::exp(-0.5f * v * v);
    d[i] *= cdf + v * pdf;
  }
}

}  // namespace

Status CpuBackend::gelu_forward(const float* x, float* y, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i += kChunk) gelu_chunk(x + i, y + i, std::min(kChunk, n - i));
  return Status::Ok();
}

Status CpuBackend::gelu_backward(const float* x, float* d, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i += kChunk) gelu_backward_chunk(x + i, d + i, std::min(kChunk, n - i));
  return Status::Ok();
}

RA_VECTOR_CLONES static void widen_chunk(const uint16_t* x, float* out, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = bf16_to_float(x[i]);
}

RA_VECTOR_CLONES static void narrow_chunk(const float* x, uint16_t* out, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = bf16_from_float(x[i]);
}

// The bf16 forms run the float32 kernels on chunks of x widened on the stack:
// f(wide, start, length) for each chunk.
template <typename F>
static void over_widened_chunks(const uint16_t* x, int64_t n, F f) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i += kChunk) {
    float wide[kChunk];
    const int64_t m = std::min(kChunk, n - i);
    widen_chunk(x + i, wide, m);
    f(wide, i, m);
  }
}

Status CpuBackend::gelu_backward_bf16(const uint16_t* x, float* d, int64_t n) {
  over_widened_chunks(x, n, [d](float* wide, int64_t i, int64_t m) { gelu_backward_chunk(wide, d + i, m); });
  return Status::Ok();
}

Status CpuBackend::gelu_backward_bf16_grads(const uint16_t* x, const uint16_t* dy, uint16_t* dx,
                                            int64_t n) {
  over_widened_chunks(x, n, [dy, dx](float* wide, int64_t i, int64_t m) {
    float d[kChunk];
    widen_chunk(dy + i, d, m);
    gelu_backward_chunk(wide, d, m);
    narrow_chunk(d, dx + i, m);
  });
  return Status::Ok();
}

Status CpuBackend::gelu_forward_bf16(const uint16_t* x, uint16_t* y, int64_t n) {
  over_widened_chunks(x, n, [y](float* wide, int64_t i, int64_t m) {
    gelu_chunk(wide, wide, m);
    narrow_chunk(wide, y + i, m);
  });
  return Status::Ok();
}

}  // namespace repadapter
