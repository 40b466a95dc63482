// Finding a backend at run time. The CPU backend is linked into the core; the CUDA backend is a
// separate shared library, repadapter_cuda.so, next to the addon, loaded on first request. So
// the core (and the Node addon) load and run on machines without CUDA libraries, and a request
// for the GPU says exactly why it cannot be had. This file needs no CUDA headers.
#pragma once
#include <string>

#include "backend.h"

namespace repadapter {

// The CUDA backend's library file name, looked for in the addon directory.
inline constexpr const char* kCudaLibraryName = "repadapter_cuda.so";
// Its one exported symbol:
//   extern "C" Backend* repadapter_create_cuda_backend(int device, char* error, size_t error_len)
// returns a new backend, or nullptr with a NUL-terminated reason in error.
inline constexpr const char* kCudaCreateSymbol = "repadapter_create_cuda_backend";

// *out = the process-wide backend for `device` (owned by the registry; never deleted, like
// cpu_backend(): a CUDA context torn down by exit-time destructors races the runtime's own).
//   kCPU:  cpu_backend().
//   kCUDA: dlopen(<addon_dir>/repadapter_cuda.so, RTLD_NOW | RTLD_LOCAL) once, then create the
//          backend on GPU 0 once; later calls return the same backend. An empty addon_dir means
//          the directory of the module this code is linked into (the .node file, or the test
//          executable), found with dladdr.
// Errors, all Unavailable and each saying which step failed:
//   "CUDA backend not built: …"       the library file is not there (a REPADAPTER_CUDA=OFF build,
//                                     or AUTO without nvcc/cuBLAS); looked for again next call
//   "cannot load the CUDA backend …"  dlopen failed, with dlerror's text (e.g. libcublas.so.13
//                                     missing); remembered
//   "… no CUDA driver: …" / "… no CUDA device: …" / other CUDA initialisation failures, as the
//                                     library's create function reports them; remembered
// Thread-safe.
Status get_backend(Device device, const std::string& addon_dir, Backend** out);

// The directory holding the module (shared object or executable) this function is linked into,
// without a trailing slash; empty if it cannot be found.
std::string module_directory();

}  // namespace repadapter
