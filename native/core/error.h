// Error codes shared by every native layer, and the one exception type that carries them.
//
// Every failure that can reach Python is a metallic::Error{code, message}. The bindings translate
// it to the matching class of metallic.errors (one subclass per code). Messages follow the shape
// "[where] what: expected X, got Y" so a user can act on them without reading the source.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

namespace metallic {

// Keep in sync with src/metallic/errors.py (tests/python/test_errors.py checks the mapping).
enum class ErrorCode : int32_t {
  kInvalidArgument = 1,
  kFileNotFound = 2,
  kCorruptFile = 3,
  kUnsupportedFormat = 4,
  kUnsupportedDType = 5,
  kUnsupportedArchitecture = 6,
  kShapeMismatch = 7,
  kOutOfMemory = 8,
  kContextOverflow = 9,
  kDeviceUnavailable = 10,
  kKernelFailure = 11,
  kCancelled = 12,
  kNotImplemented = 13,
  kClosed = 14,
  kBusy = 15,
};

constexpr std::string_view error_code_name(ErrorCode c) {
  switch (c) {
    case ErrorCode::kInvalidArgument: return "InvalidArgument";
    case ErrorCode::kFileNotFound: return "FileNotFound";
    case ErrorCode::kCorruptFile: return "CorruptFile";
    case ErrorCode::kUnsupportedFormat: return "UnsupportedFormat";
    case ErrorCode::kUnsupportedDType: return "UnsupportedDType";
    case ErrorCode::kUnsupportedArchitecture: return "UnsupportedArchitecture";
    case ErrorCode::kShapeMismatch: return "ShapeMismatch";
    case ErrorCode::kOutOfMemory: return "OutOfMemory";
    case ErrorCode::kContextOverflow: return "ContextOverflow";
    case ErrorCode::kDeviceUnavailable: return "DeviceUnavailable";
    case ErrorCode::kKernelFailure: return "KernelFailure";
    case ErrorCode::kCancelled: return "Cancelled";
    case ErrorCode::kNotImplemented: return "NotImplemented";
    case ErrorCode::kClosed: return "Closed";
    case ErrorCode::kBusy: return "Busy";
  }
  return "Unknown";
}

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  ErrorCode code() const noexcept { return code_; }

 private:
  ErrorCode code_;
};

// Throws Error(code, "[where] " + message). Use for every check on user-reachable input.
[[noreturn]] inline void fail(ErrorCode code, std::string_view where, const std::string& message) {
  std::string m;
  m.reserve(where.size() + message.size() + 3);
  m += '[';
  m += where;
  m += "] ";
  m += message;
  throw Error(code, m);
}

// For messages built with std::to_string etc. use `if (!ok) fail(...)` in hot paths: the
// arguments of check() are evaluated (and allocate) even when the check passes.
inline void check(bool ok, ErrorCode code, std::string_view where, const std::string& message) {
  if (!ok) fail(code, where, message);
}

// Literal messages: nothing is built unless the check fails.
inline void check(bool ok, ErrorCode code, std::string_view where, const char* message) {
  if (!ok) fail(code, where, std::string(message));
}

}  // namespace metallic
