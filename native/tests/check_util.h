// Shared pieces of the CUDA-against-CPU checks: deterministic random inputs, the comparison
// metric and the result table, backend memory handles, and loading the CUDA backend.
//
// The metric: for an output tensor, max_abs = max_i |gpu_i − cpu_i| and
// rel = max_abs / max_i |cpu_i| (the error relative to the tensor's own scale, which stays
// meaningful for elements near zero). A tensor passes when it has no NaN or Inf on either side
// and rel ≤ tol. Unwritten outputs are NaN (PoisonBackend), so they fail.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "../core/backend.h"
#include "../core/backend_registry.h"
#include "../core/rng.h"

#ifndef REPADAPTER_CUDA_LIB_DIR
#define REPADAPTER_CUDA_LIB_DIR ""  // CMake sets it to the directory of repadapter_cuda.so
#endif

namespace repadapter {
namespace check {

// Uniform random values from the project's counter-based RNG: the same on every machine.
class Gen {
 public:
  explicit Gen(uint64_t seed) : seed_(seed) {}
  std::vector<float> uniform(int64_t n, float lo, float hi) {
    std::vector<float> v(static_cast<size_t>(std::max<int64_t>(n, 0)));
    const uint64_t stream = stream_++;
    for (int64_t i = 0; i < n; ++i) v[i] = lo + (hi - lo) * uniform01(seed_, stream, static_cast<uint64_t>(i));
    return v;
  }
  int64_t integer(int64_t below) {
    return static_cast<int64_t>(uniform01(seed_, stream_++, 0) * static_cast<float>(below)) % below;
  }

 private:
  uint64_t seed_;
  uint64_t stream_ = 1;
};

struct Result {
  std::string op, label, output;
  int64_t n = 0;
  double max_abs = 0, rel = 0, tol = 0;
  int64_t nonfinite = 0;
  bool pass = false;
  std::string note;
};

inline Result compare(const std::string& op, const std::string& label, const std::string& output,
                      const std::vector<float>& ref, const std::vector<float>& got, double tol) {
  Result r;
  r.op = op;
  r.label = label;
  r.output = output;
  r.tol = tol;
  r.n = static_cast<int64_t>(ref.size());
  if (ref.size() != got.size()) {
    r.note = "size " + std::to_string(got.size()) + " vs reference " + std::to_string(ref.size());
    return r;
  }
  double scale = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!std::isfinite(ref[i]) || !std::isfinite(got[i])) {
      if (r.nonfinite++ == 0)
        r.note = "first non-finite at " + std::to_string(i) + " (cpu " + std::to_string(ref[i]) +
                 ", cuda " + std::to_string(got[i]) + ")";
      continue;
    }
    scale = std::max(scale, std::fabs(static_cast<double>(ref[i])));
    r.max_abs = std::max(r.max_abs, std::fabs(static_cast<double>(got[i]) - ref[i]));
  }
  r.rel = scale > 0 ? r.max_abs / scale : (r.max_abs > 0 ? INFINITY : 0.0);
  r.pass = r.nonfinite == 0 && r.rel <= tol;
  return r;
}

inline Result failure(const std::string& op, const std::string& label, const std::string& why) {
  Result r;
  r.op = op;
  r.label = label;
  r.output = "-";
  r.note = why;
  return r;
}

inline void print_header() {
  std::printf("%-14s %-40s %-12s %10s %11s %11s %9s  %s\n", "op", "case", "output", "numel",
              "max_abs", "max_rel", "tol", "result");
}

inline void print_result(const Result& r) {
  std::printf("%-14s %-40s %-12s %10lld %11.3e %11.3e %9.1e  %s%s%s\n", r.op.c_str(),
              r.label.c_str(), r.output.c_str(), static_cast<long long>(r.n), r.max_abs, r.rel,
              r.tol, r.pass ? "PASS" : "FAIL", r.note.empty() ? "" : "  ", r.note.c_str());
  std::fflush(stdout);
}

// Backend memory released together at scope exit.
class Pool {
 public:
  explicit Pool(Backend& be) : be_(be) {}
  ~Pool() {
    for (void* p : ptrs_) be_.release(p);
  }
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;
  Status alloc(int64_t n, float** out) {
    void* p = nullptr;
    RA_RETURN_IF_ERROR(be_.allocate(static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(float), &p));
    ptrs_.push_back(p);
    *out = static_cast<float*>(p);
    return Status::Ok();
  }
  Status put(const std::vector<float>& host, float** out) {
    RA_RETURN_IF_ERROR(alloc(static_cast<int64_t>(host.size()), out));
    return be_.upload(*out, host.data(), host.size() * sizeof(float));
  }
  Status get(const float* p, int64_t n, std::vector<float>* out) {
    out->resize(static_cast<size_t>(n));
    RA_RETURN_IF_ERROR(be_.synchronize());
    return be_.download(out->data(), p, static_cast<size_t>(n) * sizeof(float));
  }

 private:
  Backend& be_;
  std::vector<void*> ptrs_;
};

// "--lib-dir DIR" from argv, else the build's directory of repadapter_cuda.so.
inline std::string lib_dir_from_args(int argc, char** argv) {
  for (int i = 1; i + 1 < argc; ++i)
    if (std::string(argv[i]) == "--lib-dir") return argv[i + 1];
  return REPADAPTER_CUDA_LIB_DIR;
}

// Loads the CUDA backend through the registry, as the addon does. On failure prints why and
// returns null; the checks then exit with code 2 ("no GPU here"), distinct from a failed check.
inline Backend* load_cuda_or_report(const std::string& lib_dir) {
  Backend* cuda = nullptr;
  Status st = get_backend(Device::kCUDA, lib_dir, &cuda);
  if (!st.ok()) {
    std::printf("%s (library directory %s)\n", st.message().c_str(), lib_dir.c_str());
    return nullptr;
  }
  // The registry remembers its answer: a second request must give the same backend.
  Backend* again = nullptr;
  st = get_backend(Device::kCUDA, lib_dir, &again);
  if (!st.ok() || again != cuda) {
    std::printf("FAIL: a second get_backend(kCUDA) did not return the same backend\n");
    return nullptr;
  }
  return cuda;
}

}  // namespace check
}  // namespace repadapter
