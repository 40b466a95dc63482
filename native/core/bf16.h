// bfloat16: the upper 16 bits of a float32 (8 exponent bits, 7 mantissa bits). Conversions
// round to nearest, ties to even — what oneDNN, cuBLAS and PyTorch do — so the same weights
// give the same bf16 copies on every backend.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define RA_HOST_DEVICE __host__ __device__
#else
#define RA_HOST_DEVICE
#endif

namespace repadapter {

RA_HOST_DEVICE inline uint16_t bf16_from_float(float x) {
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  // A NaN keeps its sign and stays a (quiet) NaN; rounding could carry it into infinity.
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

RA_HOST_DEVICE inline float bf16_to_float(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float x;
  memcpy(&x, &u, sizeof x);
  return x;
}

}  // namespace repadapter
