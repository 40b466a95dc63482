// Host memory for the CPU backend: 64-byte aligned so oneDNN's AVX-512 kernels see aligned rows.
#include <cstdlib>
#include <cstring>
#include <string>

#include <sys/mman.h>

#include "cpu_backend.h"

namespace repadapter {

Status CpuBackend::allocate(size_t bytes, void** out) {
  *out = nullptr;
  if (bytes == 0) return Status::Ok();
  constexpr size_t kHuge = size_t{2} << 20;
  const size_t align = bytes >= kHuge ? kHuge : 64;
  size_t rounded = (bytes + align - 1) / align * align;
  void* p = std::aligned_alloc(align, rounded);
  if (!p) return OutOfMemory("could not allocate " + std::to_string(bytes) + " bytes of host memory");
  if (align == kHuge) madvise(p, rounded, MADV_HUGEPAGE);
  *out = p;
  return Status::Ok();
}

void CpuBackend::release(void* ptr) { std::free(ptr); }

Status CpuBackend::upload(void* dst, const void* host_src, size_t bytes) {
  if (bytes) std::memcpy(dst, host_src, bytes);
  return Status::Ok();
}

Status CpuBackend::download(void* host_dst, const void* src, size_t bytes) {
  if (bytes) std::memcpy(host_dst, src, bytes);
  return Status::Ok();
}

Status CpuBackend::copy(void* dst, const void* src, size_t bytes) {
  if (bytes && dst != src) std::memmove(dst, src, bytes);
  return Status::Ok();
}

Status CpuBackend::fill(float* x, int64_t n, float value) {
#pragma omp parallel for schedule(static) if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) x[i] = value;
  return Status::Ok();
}

Backend& cpu_backend() {
  static CpuBackend backend;
  return backend;
}

}  // namespace repadapter
