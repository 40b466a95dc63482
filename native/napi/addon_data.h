// Per-environment state of the addon (one per main thread or worker thread): class
// constructors and the compute queue. Nothing is static, so every worker gets its own.
#pragma once
#include <napi.h>

#include <memory>

#include "compute_queue.h"

namespace repadapter {

struct AddonData {
  std::unique_ptr<ComputeQueue> queue;
  Napi::FunctionReference tensor_class;
};

}  // namespace repadapter
