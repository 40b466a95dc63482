// Errors are values until the N-API boundary: every native entry point returns a Status, and
// nothing in the core throws across an API, calls exit() or abort().
#pragma once
#include <string>
#include <utility>

namespace repadapter {

enum class Code {
  kOk = 0,
  kInvalidArgument,  // a caller passed something malformed: shapes, configs, names
  kOutOfRange,       // an index or label outside its valid range
  kOutOfMemory,
  kUnavailable,      // a backend or library that is not present on this machine
  kInternal,         // a library call failed for a reason we did not foresee
};

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Code code, std::string message) : code_(code), message_(std::move(message)) {}
  static Status Ok() { return Status(); }
  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }

 private:
  Code code_ = Code::kOk;
  std::string message_;
};

inline Status InvalidArgument(std::string m) { return Status(Code::kInvalidArgument, std::move(m)); }
inline Status OutOfRange(std::string m) { return Status(Code::kOutOfRange, std::move(m)); }
inline Status Internal(std::string m) { return Status(Code::kInternal, std::move(m)); }
inline Status Unavailable(std::string m) { return Status(Code::kUnavailable, std::move(m)); }
inline Status OutOfMemory(std::string m) { return Status(Code::kOutOfMemory, std::move(m)); }

}  // namespace repadapter

#define RA_RETURN_IF_ERROR(expr)                   \
  do {                                             \
    ::repadapter::Status _ra_status = (expr);      \
    if (!_ra_status.ok()) return _ra_status;       \
  } while (0)
