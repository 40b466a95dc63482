// Device memory for the CUDA backend: plain cudaMalloc (256-byte aligned, so every tensor start
// suits vectorised and cuBLASLt's fastest kernels), copies on the backend's stream.
// allocate() and release() also keep a process-wide count of the bytes they hold and its
// high-water mark, which repadapter_cuda_memory_stats (end of this file) reports to benchmarks.
#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>

#include "common.cuh"

namespace repadapter {
namespace {

__global__ void fill_kernel(float* x, int64_t n, float value) {
  RA_GRID_LOOP(i, n) x[i] = value;
}

// The bytes held in allocate()'s allocations, over every CUDA backend of the process.
struct AllocationCount {
  std::mutex mutex;
  std::unordered_map<void*, size_t> sizes;
  uint64_t live = 0, peak = 0;
};
AllocationCount& allocation_count() {
  static AllocationCount* count = new AllocationCount();  // never destroyed, like the backend
  return *count;
}

}  // namespace

Status CudaBackend::allocate(size_t bytes, void** out) {
  *out = nullptr;
  if (bytes == 0) return Status::Ok();
  RA_CUDA_ENTRY();
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, bytes);
  if (e != cudaSuccess) {
    cudaGetLastError();  // cudaErrorMemoryAllocation is not sticky; clear it for later calls
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    if (e == cudaErrorMemoryAllocation)
      return OutOfMemory("CUDA out of memory: requested " + std::to_string(bytes) + " bytes, " +
                         std::to_string(free_b) + " bytes free of " + std::to_string(total_b) +
                         " on device " + std::to_string(device_) + " (" + device_name_ + ")");
    return from_cuda(e, ("cudaMalloc of " + std::to_string(bytes) + " bytes").c_str());
  }
  AllocationCount& count = allocation_count();
  {
    std::lock_guard<std::mutex> guard(count.mutex);
    count.sizes[p] = bytes;
    count.live += bytes;
    if (count.live > count.peak) count.peak = count.live;
  }
  *out = p;
  return Status::Ok();
}

void CudaBackend::release(void* ptr) {
  if (!ptr) return;
  CudaLock lock(*this);
  {
    AllocationCount& count = allocation_count();
    std::lock_guard<std::mutex> guard(count.mutex);
    const auto it = count.sizes.find(ptr);
    if (it != count.sizes.end()) {
      count.live -= it->second;
      count.sizes.erase(it);
    }
  }
  if (!make_current().ok()) return;
  // cudaFree waits for queued work, so memory an op still reads is never reused under it.
  cudaFree(ptr);
  cudaGetLastError();  // release cannot report; a later call will see any sticky error
}

// Waits for the copy: the caller may reuse or free host_src as soon as upload returns, which an
// asynchronous copy from pinned memory would not allow.
Status CudaBackend::upload(void* dst, const void* host_src, size_t bytes) {
  if (bytes == 0) return Status::Ok();
  RA_CUDA_ENTRY();
  RA_RETURN_IF_ERROR(from_cuda(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, stream_),
                               "cudaMemcpyAsync (upload)"));
  return from_cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize after upload");
}

Status CudaBackend::download(void* host_dst, const void* src, size_t bytes) {
  if (bytes == 0) return Status::Ok();
  RA_CUDA_ENTRY();
  RA_RETURN_IF_ERROR(from_cuda(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, stream_),
                               "cudaMemcpyAsync (download)"));
  return from_cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize after download");
}

// memmove semantics, as the CPU backend: cudaMemcpy's result is undefined for overlapping
// ranges, so an overlapping copy goes through scratch.
Status CudaBackend::copy(void* dst, const void* src, size_t bytes) {
  if (bytes == 0 || dst == src) return Status::Ok();
  RA_CUDA_ENTRY();
  const char* d = static_cast<const char*>(dst);
  const char* s = static_cast<const char*>(src);
  const bool overlap = d < s + bytes && s < d + bytes;
  if (!overlap)
    return from_cuda(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_),
                     "cudaMemcpyAsync (copy)");
  void* tmp = nullptr;
  RA_RETURN_IF_ERROR(scratch(bytes, &tmp));
  RA_RETURN_IF_ERROR(from_cuda(cudaMemcpyAsync(tmp, src, bytes, cudaMemcpyDeviceToDevice, stream_),
                               "cudaMemcpyAsync (overlapping copy, first half)"));
  return from_cuda(cudaMemcpyAsync(dst, tmp, bytes, cudaMemcpyDeviceToDevice, stream_),
                   "cudaMemcpyAsync (overlapping copy, second half)");
}

Status CudaBackend::fill(float* x, int64_t n, float value) {
  if (n <= 0) return Status::Ok();
  RA_CUDA_ENTRY();
  fill_kernel<<<blocks_for(n), 256, 0, stream_>>>(x, n, value);
  return launched("fill");
}

Status CudaBackend::synchronize() {
  RA_CUDA_ENTRY();
  const cudaError_t e = cudaStreamSynchronize(stream_);
  if (e != cudaSuccess)
    return from_cuda(e, "queued GPU work (reported at synchronize)");
  return launched("queued GPU work (reported at synchronize)");
}

}  // namespace repadapter

// Device memory figures for benchmarks (native/tests/cuda_bench.cc finds this with dlsym):
//   out[0]  bytes held now in allocate()'s allocations (every CUDA backend of the process)
//   out[1]  their high-water mark since the library was loaded or the last reset
//   out[2], out[3]  free and total bytes of the current device (cudaMemGetInfo: everything,
//           the backend's scratch and cuBLASLt workspace and other processes included)
// reset_peak != 0 sets the high-water mark to the bytes held now, after reading it. Returns 0,
// or cudaMemGetInfo's error code (out[2], out[3] are then 0). The first call on a thread without
// a CUDA context creates the device's primary context.
extern "C" __attribute__((visibility("default"))) int repadapter_cuda_memory_stats(uint64_t* out,
                                                                                   int reset_peak) {
  repadapter::AllocationCount& count = repadapter::allocation_count();
  {
    std::lock_guard<std::mutex> guard(count.mutex);
    out[0] = count.live;
    out[1] = count.peak;
    if (reset_peak) count.peak = count.live;
  }
  size_t free_b = 0, total_b = 0;
  const cudaError_t e = cudaMemGetInfo(&free_b, &total_b);
  if (e != cudaSuccess) cudaGetLastError();
  out[2] = free_b;
  out[3] = total_b;
  return static_cast<int>(e);
}
