// Construction of the CUDA backend, the shared helpers of cuda_backend.h, and the library's only
// exported symbol: repadapter_create_cuda_backend, which backend_registry.cc finds with dlsym.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>

#include "common.cuh"
#include "cuda_backend.h"

#ifndef REPADAPTER_CUDA_ARCHS
#define REPADAPTER_CUDA_ARCHS "unknown"
#endif

namespace repadapter {
namespace {

// A kernel with no work, used to ask the runtime whether this build has code for the GPU.
__global__ void probe_kernel() {}

std::string version_text(int v) {  // 13000 → "13.0"
  if (v <= 0) return "none";
  return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
}

std::string error_text(cudaError_t e) {
  return std::string(cudaGetErrorName(e)) + " (" + std::to_string(static_cast<int>(e)) + ": " +
         cudaGetErrorString(e) + ")";
}

Status from_cublas(cublasStatus_t s, const char* what) {
  return Unavailable(std::string(what) + " failed: " + cublasGetStatusName(s) + " (" +
                     cublasGetStatusString(s) + ")");
}

}  // namespace

Status CudaBackend::from_cuda(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return Status::Ok();
  return Internal(std::string("CUDA: ") + what + " failed: " + error_text(e));
}

Status CudaBackend::launched(const char* kernel) const {
  const cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) return Status::Ok();
  return Internal(std::string("CUDA kernel for ") + kernel + " failed: " + error_text(e));
}

unsigned CudaBackend::blocks_for(int64_t n, int threads) const {
  // Enough blocks to fill the GPU several times over; grid-stride loops do the rest.
  const int64_t needed = (n + threads - 1) / threads;
  const int64_t cap = static_cast<int64_t>(sm_count_) * 32;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(needed, cap)));
}

Status CudaBackend::make_current() const {
  int current = -1;
  cudaError_t e = cudaGetDevice(&current);
  if (e == cudaSuccess && current == device_) return Status::Ok();
  return from_cuda(cudaSetDevice(device_), "cudaSetDevice");
}

// Grows one of the backend's scratch buffers to at least `bytes` (half as much again, at least
// 1 MiB), never while recording.
Status CudaBackend::grow(void** buffer, size_t* held, size_t bytes, const char* what) {
  if (bytes <= *held) return Status::Ok();
  if (capturing_)
    return Internal(std::string(what) + ": a recording cannot grow it (" + std::to_string(bytes) +
                    " bytes asked, " + std::to_string(*held) + " held): run the ops once first");
  if (*buffer) cudaFree(*buffer);  // waits for queued work that may still read it
  *buffer = nullptr;
  *held = 0;
  const size_t want = std::max<size_t>(bytes + bytes / 2, 1 << 20);
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, want);
  if (e != cudaSuccess) {
    cudaGetLastError();  // an allocation failure is not sticky: clear it
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    return OutOfMemory(std::string("CUDA out of memory for ") + what + ": requested " + std::to_string(want) +
                       " bytes, " + std::to_string(free_b) + " free of " + std::to_string(total_b) +
                       " on device " + std::to_string(device_));
  }
  *buffer = p;
  *held = want;
  ++scratch_generation_;
  return Status::Ok();
}

Status CudaBackend::scratch(size_t bytes, void** out) {
  RA_RETURN_IF_ERROR(grow(&scratch_, &scratch_bytes_, bytes, "scratch"));
  *out = scratch_;
  return Status::Ok();
}

Status CudaBackend::widened(size_t bytes, float** out) {
  RA_RETURN_IF_ERROR(grow(&widened_, &widened_bytes_, bytes, "the widened-copy buffer"));
  *out = static_cast<float*>(widened_);
  return Status::Ok();
}

Status CudaBackend::Create(int device, std::unique_ptr<CudaBackend>* out) {
  std::unique_ptr<CudaBackend> backend(new (std::nothrow) CudaBackend());
  if (!backend) return OutOfMemory("could not allocate the CUDA backend object");
  RA_RETURN_IF_ERROR(backend->init(device));
  *out = std::move(backend);
  return Status::Ok();
}

Status CudaBackend::init(int device) {
  device_ = device;
  int runtime = 0, driver = 0;
  cudaRuntimeGetVersion(&runtime);
  cudaDriverGetVersion(&driver);  // 0 when no driver is installed
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e == cudaErrorInsufficientDriver) {
    cudaGetLastError();
    if (driver == 0)
      return Unavailable("no CUDA driver: the NVIDIA driver (libcuda.so.1) is not installed or "
                         "could not be loaded, so no GPU can be used (this backend was built with "
                         "CUDA runtime " + version_text(runtime) + "; " + error_text(e) + ")");
    return Unavailable("no CUDA driver: the installed NVIDIA driver supports CUDA " +
                       version_text(driver) + ", older than CUDA " + version_text(runtime) +
                       " that this backend was built with; update the driver (" +
                       error_text(e) + ")");
  }
  if (e == cudaErrorNoDevice || (e == cudaSuccess && count == 0)) {
    cudaGetLastError();
    return Unavailable("no CUDA device: the NVIDIA driver (CUDA " + version_text(driver) +
                       ") is present but reports no GPU (" + error_text(cudaErrorNoDevice) + ")");
  }
  if (e != cudaSuccess) {
    cudaGetLastError();
    return Unavailable("CUDA could not be initialised: cudaGetDeviceCount returned " +
                       error_text(e) + " (driver CUDA " + version_text(driver) + ", runtime " +
                       version_text(runtime) + ")");
  }
  if (device < 0 || device >= count)
    return Unavailable("no CUDA device " + std::to_string(device) + ": this machine has " +
                       std::to_string(count) + " (devices 0.." + std::to_string(count - 1) + ")");
  e = cudaSetDevice(device);
  if (e != cudaSuccess) return Unavailable("cudaSetDevice(" + std::to_string(device) + ") failed: " + error_text(e));
  cudaDeviceProp prop;
  e = cudaGetDeviceProperties(&prop, device);
  if (e != cudaSuccess) return Unavailable("cudaGetDeviceProperties failed: " + error_text(e));
  device_name_ = prop.name;
  sm_count_ = std::max(1, prop.multiProcessorCount);
  // A GPU older than every architecture in the build has no kernel image: say so now rather
  // than at the first launch.
  cudaFuncAttributes attr;
  e = cudaFuncGetAttributes(&attr, probe_kernel);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return Unavailable("the GPU " + device_name_ + " (compute capability " +
                       std::to_string(prop.major) + "." + std::to_string(prop.minor) +
                       ") is not supported by this build of repadapter_cuda.so (built for " +
                       REPADAPTER_CUDA_ARCHS + "): " + error_text(e));
  }
  e = cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking);
  if (e != cudaSuccess) return Unavailable("cudaStreamCreate failed: " + error_text(e));

  cublasStatus_t s = cublasLtCreate(&lt_);
  if (s != CUBLAS_STATUS_SUCCESS) return from_cublas(s, "cublasLtCreate");
  s = cublasCreate(&blas_);
  if (s != CUBLAS_STATUS_SUCCESS) return from_cublas(s, "cublasCreate");
  s = cublasSetStream(blas_, stream_);
  if (s != CUBLAS_STATUS_SUCCESS) return from_cublas(s, "cublasSetStream");

  const char* tf32 = std::getenv("REPADAPTER_CUDA_TF32");
  math_mode_ = tf32 && std::strcmp(tf32, "1") == 0 ? MathMode::kTf32 : MathMode::kFp32;
  // The fallback path (cublasSgemmStridedBatched) follows the same mode.
  s = cublasSetMathMode(blas_, math_mode_ == MathMode::kTf32 ? CUBLAS_TF32_TENSOR_OP_MATH
                                                             : CUBLAS_DEFAULT_MATH);
  if (s != CUBLAS_STATUS_SUCCESS) return from_cublas(s, "cublasSetMathMode");

  // 32 MiB: what NVIDIA recommends for cuBLASLt on Hopper.
  workspace_bytes_ = 32u << 20;
  e = cudaMalloc(&workspace_, workspace_bytes_);
  if (e != cudaSuccess) {
    cudaGetLastError();
    workspace_ = nullptr;
    return Unavailable("could not allocate the 32 MiB cuBLASLt workspace: " + error_text(e));
  }
  return Status::Ok();
}

// ---- graphs --------------------------------------------------------------------------------------
// Thread-local capture mode: a call on this thread that is not allowed while recording (a
// synchronize, a copy from pageable memory, cudaMalloc) fails, and so fails the recording,
// instead of silently running outside it.

Status CudaBackend::begin_capture() {
  RA_CUDA_ENTRY();
  if (capturing_) return Internal("begin_capture: a recording is already in progress");
  RA_RETURN_IF_ERROR(from_cuda(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal),
                               "cudaStreamBeginCapture"));
  capturing_ = true;
  return Status::Ok();
}

Status CudaBackend::end_capture(void** out) {
  RA_CUDA_ENTRY();
  *out = nullptr;
  if (!capturing_) return Internal("end_capture: no recording is in progress");
  capturing_ = false;
  cudaGraph_t graph = nullptr;
  const cudaError_t ended = cudaStreamEndCapture(stream_, &graph);
  if (ended != cudaSuccess) {
    if (graph) cudaGraphDestroy(graph);
    cudaGetLastError();  // an invalidated recording is not sticky: clear it for the next op
    return from_cuda(ended, "cudaStreamEndCapture (an op inside the recording was not recordable)");
  }
  cudaGraphExec_t exec = nullptr;
  const cudaError_t made = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  if (made != cudaSuccess) {
    cudaGetLastError();
    return from_cuda(made, "cudaGraphInstantiate");
  }
  *out = exec;
  graph_generation_[exec] = scratch_generation_;
  return Status::Ok();
}

Status CudaBackend::replay(void* graph) {
  RA_CUDA_ENTRY();
  if (!graph) return InvalidArgument("replay: no graph");
  const auto made = graph_generation_.find(graph);
  if (made == graph_generation_.end() || made->second != scratch_generation_)
    return Unavailable("replay: the recording reads a scratch buffer that has since moved; record it again");
  return from_cuda(cudaGraphLaunch(static_cast<cudaGraphExec_t>(graph), stream_), "cudaGraphLaunch");
}

void CudaBackend::release_graph(void* graph) {
  if (!graph) return;
  std::lock_guard<std::recursive_mutex> lock(mutex_);
  graph_generation_.erase(graph);
  if (make_current().ok()) cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(graph));
}

CudaBackend::~CudaBackend() {
  if (stream_) cudaStreamSynchronize(stream_);
  plans_.clear();  // each GemmPlan destroys its cuBLASLt descriptors
  if (blas_) cublasDestroy(blas_);
  if (lt_) cublasLtDestroy(lt_);
  if (workspace_) cudaFree(workspace_);
  if (scratch_) cudaFree(scratch_);
  if (widened_) cudaFree(widened_);
  if (stream_) cudaStreamDestroy(stream_);
  cudaGetLastError();
}

}  // namespace repadapter

// ---- the library's entry point -----------------------------------------------------------------

namespace {
void write_error(char* error, size_t error_len, const std::string& message) {
  if (!error || error_len == 0) return;
  std::snprintf(error, error_len, "%s", message.c_str());
}
}  // namespace

// Creates the CUDA backend on `device`, or returns nullptr and writes why into error (always
// NUL-terminated, truncated to error_len). Never throws, never aborts. The caller owns the
// backend (delete it through the Backend pointer); backend_registry.cc keeps it for the process.
extern "C" __attribute__((visibility("default"))) repadapter::Backend*
repadapter_create_cuda_backend(int device, char* error, size_t error_len) {
  try {
    std::unique_ptr<repadapter::CudaBackend> backend;
    repadapter::Status st = repadapter::CudaBackend::Create(device, &backend);
    if (!st.ok()) {
      write_error(error, error_len, st.message());
      return nullptr;
    }
    write_error(error, error_len, "");
    return backend.release();
  } catch (const std::exception& e) {
    write_error(error, error_len, std::string("CUDA backend creation failed: ") + e.what());
  } catch (...) {
    write_error(error, error_len, "CUDA backend creation failed with an unknown exception");
  }
  return nullptr;
}
