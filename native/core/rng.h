// Counter-based randomness: every random number is a pure function of (seed, stream, index), so
// dropout and drop-path masks are identical whatever the thread count or backend, and a run
// resumed from a checkpoint (seed + step) draws exactly the numbers it would have drawn.
#pragma once
#include <cstdint>

namespace repadapter {

// SplitMix64 finaliser: a bijective mixer with good avalanche, cheap on CPU and GPU alike.
#if defined(__CUDACC__)
__host__ __device__
#endif
inline uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Uniform in [0, 1) with 24 random bits: exactly representable in float32.
#if defined(__CUDACC__)
__host__ __device__
#endif
inline float uniform01(uint64_t seed, uint64_t stream, uint64_t index) {
  uint64_t h = mix64(seed ^ mix64(stream ^ mix64(index)));
  return static_cast<float>(h >> 40) * (1.0f / 16777216.0f);
}

}  // namespace repadapter
