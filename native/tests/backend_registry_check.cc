// What get_backend answers on this machine, for both devices.
//
//   backend_registry_check [--lib-dir DIR] [--expect available|not-built|cannot-load|no-driver|no-device]
//
// Prints the CPU backend's name and the CUDA request's outcome (the backend's name, or the
// registry's message). With --expect, exits 1 unless the CUDA outcome is that kind, so a
// machine without a GPU can check that it gets the right explanation. Built in every
// configuration (it needs no CUDA): with REPADAPTER_CUDA=OFF the expected answer is not-built.
#include <cstdio>
#include <string>

#include "../core/backend_registry.h"

#ifndef REPADAPTER_CUDA_LIB_DIR
#define REPADAPTER_CUDA_LIB_DIR ""
#endif

using namespace repadapter;

namespace {

// The kind of a CUDA answer, from the registry's documented message prefixes.
std::string kind_of(const Status& st) {
  if (st.ok()) return "available";
  const std::string& m = st.message();
  if (m.rfind("CUDA backend not built", 0) == 0) return "not-built";
  if (m.rfind("cannot load the CUDA backend", 0) == 0) return "cannot-load";
  if (m.find("no CUDA driver") != std::string::npos) return "no-driver";
  if (m.find("no CUDA device") != std::string::npos) return "no-device";
  return "other";
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir = REPADAPTER_CUDA_LIB_DIR, expect;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--lib-dir" && i + 1 < argc) {
      dir = argv[++i];
    } else if (a == "--expect" && i + 1 < argc) {
      expect = argv[++i];
    } else {
      std::fprintf(stderr, "usage: %s [--lib-dir DIR] [--expect KIND]\n", argv[0]);
      return 3;
    }
  }
  Backend* cpu = nullptr;
  Status st = get_backend(Device::kCPU, dir, &cpu);
  if (!st.ok() || !cpu || cpu->device() != Device::kCPU) {
    std::printf("cpu: FAIL %s\n", st.message().c_str());
    return 1;
  }
  std::printf("cpu: %s\n", cpu->name());
  Backend* cuda = nullptr;
  st = get_backend(Device::kCUDA, dir, &cuda);
  const std::string kind = kind_of(st);
  std::printf("cuda (dir '%s'): %s: %s\n", dir.c_str(), kind.c_str(),
              st.ok() ? cuda->name() : st.message().c_str());
  // Asked again, the registry gives the same answer (it loads the library once).
  Backend* again = nullptr;
  Status st2 = get_backend(Device::kCUDA, dir, &again);
  if (st2.ok() != st.ok() || again != cuda || st2.message() != st.message()) {
    std::printf("FAIL: a second request answered differently: %s\n", st2.message().c_str());
    return 1;
  }
  if (!expect.empty() && kind != expect) {
    std::printf("FAIL: expected %s\n", expect.c_str());
    return 1;
  }
  return 0;
}
