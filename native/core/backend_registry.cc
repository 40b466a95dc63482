#include "backend_registry.h"

#include <dlfcn.h>
#include <sys/stat.h>

#include <mutex>

#include "../cpu/cpu_backend.h"

namespace repadapter {
namespace {

using CreateFn = Backend* (*)(int device, char* error, size_t error_len);

// What loading the CUDA backend came to. Kept for the process: a library that failed to load or
// a machine without a driver will not change while we run.
struct CudaState {
  std::mutex mutex;
  bool attempted = false;
  std::string path;        // the library the attempt used
  Backend* backend = nullptr;
  Status failure;          // when attempted and backend is null
};

CudaState& cuda_state() {
  static CudaState* state = new CudaState();  // never destroyed: see get_backend in the header
  return *state;
}

bool file_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

Status load_cuda(const std::string& path, Backend** out) {
  // Clear any stale error, so dlerror() below is about this call.
  ::dlerror();
  void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle) {
    const char* why = ::dlerror();
    std::string message = "cannot load the CUDA backend " + path + ": " + (why ? why : "unknown dlopen error");
    if (message.find("libcublas") != std::string::npos)
      message += " (cuBLAS 13 is missing: install the CUDA toolkit's cuBLAS, or `pip install "
                 "nvidia-cublas` and put its nvidia/cu13/lib on LD_LIBRARY_PATH)";
    return Unavailable(message);
  }
  // The handle is never closed: the backend's code lives in it until the process ends.
  ::dlerror();
  void* symbol = ::dlsym(handle, kCudaCreateSymbol);
  if (!symbol) {
    const char* why = ::dlerror();
    return Unavailable("cannot load the CUDA backend " + path + ": it does not export " +
                       kCudaCreateSymbol + " (" + (why ? why : "not found") +
                       "); is it a repadapter_cuda.so from this build?");
  }
  CreateFn create = reinterpret_cast<CreateFn>(symbol);
  char error[1024] = {0};
  Backend* backend = create(0, error, sizeof(error));
  if (!backend)
    return Unavailable(std::string("CUDA backend unavailable: ") +
                       (error[0] ? error : "the CUDA backend could not be created (no reason given)"));
  *out = backend;
  return Status::Ok();
}

}  // namespace

std::string module_directory() {
  Dl_info info;
  if (::dladdr(reinterpret_cast<void*>(&module_directory), &info) == 0 || !info.dli_fname)
    return "";
  std::string file = info.dli_fname;
  const size_t slash = file.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return file.substr(0, slash);
}

Status get_backend(Device device, const std::string& addon_dir, Backend** out) {
  *out = nullptr;
  switch (device) {
    case Device::kCPU:
      *out = &cpu_backend();
      return Status::Ok();
    case Device::kCUDA:
      break;
    default:
      return InvalidArgument("unknown device " + std::to_string(static_cast<int>(device)));
  }
  CudaState& state = cuda_state();
  std::lock_guard<std::mutex> lock(state.mutex);
  if (state.backend) {
    *out = state.backend;
    return Status::Ok();
  }
  std::string dir = addon_dir.empty() ? module_directory() : addon_dir;
  if (dir.empty())
    return Unavailable("CUDA backend not built or not found: no addon directory was given and the "
                       "module's own directory could not be determined");
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  const std::string path = dir + "/" + kCudaLibraryName;
  if (state.attempted && state.path == path) return state.failure;
  if (!file_exists(path))
    return Unavailable("CUDA backend not built: " + path + " does not exist. This build has no "
                       "CUDA backend: rebuild with REPADAPTER_CUDA=ON (needs nvcc and cuBLAS; the "
                       "configure step prints a line starting 'repadapter: CUDA backend')");
  state.attempted = true;
  state.path = path;
  Backend* backend = nullptr;
  Status st = load_cuda(path, &backend);
  if (!st.ok()) {
    state.failure = st;
    return st;
  }
  state.backend = backend;
  *out = backend;
  return Status::Ok();
}

}  // namespace repadapter
