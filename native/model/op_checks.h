// Every op runnable by name on host data, forward and backward, through any Backend. The tests
// use it for finite-difference checks of each backward, and the CUDA checks (native/tests) to
// compare each CUDA op against the CPU op on the same inputs.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "../core/backend.h"

namespace repadapter {

using HostTensors = std::map<std::string, std::vector<float>>;
using OpAttrs = std::map<std::string, double>;

// Runs op `name` forward; with d_outputs (a gradient for each output), also backward, adding
// "d_<input>" entries to outputs for every differentiable input.
Status run_op(Backend& backend, const std::string& name, const OpAttrs& attrs,
              const HostTensors& inputs, const HostTensors* d_outputs, HostTensors* outputs);

std::vector<std::string> op_names();

}  // namespace repadapter
