// The one place where a native Status becomes a JavaScript error. The TypeScript layer maps
// `code` to its typed error classes.
#pragma once
#include <napi.h>

#include "../core/status.h"

namespace repadapter {

inline const char* status_code_name(Code code) {
  switch (code) {
    case Code::kOk: return "OK";
    case Code::kInvalidArgument: return "RA_INVALID_ARGUMENT";
    case Code::kOutOfRange: return "RA_OUT_OF_RANGE";
    case Code::kOutOfMemory: return "RA_OUT_OF_MEMORY";
    case Code::kUnavailable: return "RA_UNAVAILABLE";
    case Code::kInternal: return "RA_INTERNAL";
  }
  return "RA_INTERNAL";
}

inline Napi::Error status_to_error(Napi::Env env, const Status& status) {
  Napi::Error error = Napi::Error::New(env, status.message());
  error.Set("code", Napi::String::New(env, status_code_name(status.code())));
  return error;
}

inline void throw_if_error(Napi::Env env, const Status& status) {
  if (!status.ok()) throw status_to_error(env, status);
}

}  // namespace repadapter

namespace repadapter {

[[noreturn]] inline void throw_invalid(Napi::Env env, const std::string& message) {
  Napi::TypeError error = Napi::TypeError::New(env, message);
  error.Set("code", Napi::String::New(env, "RA_INVALID_ARGUMENT"));
  throw error;
}

}  // namespace repadapter
