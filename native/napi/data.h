// The data pipeline's N-API functions (batch assembly, shuffled orders); see napi/data.cc.
#pragma once
#include <napi.h>

namespace repadapter {

// Adds dataPermutation, dataBatch, dataBatchAsync and dataResizeAsync to the addon's exports.
void register_data(Napi::Env env, Napi::Object exports);

}  // namespace repadapter
