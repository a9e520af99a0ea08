// The Metal plan: everything the two Metal devices ("metal" on Apple, "metal-emulated" on any
// machine) share. Plain C++: for each op it picks the kernel, the grid and threadgroup size, the
// buffer ranges each [[buffer(i)]] binds and the argument struct (shaders/args.h), and hands the
// finished Launch to the device's encode(), which only binds and dispatches (the emulator runs
// it through emu_dispatch, the Metal device encodes it into the current command buffer).
//
// Safety fence: every tensor a kernel binds is checked here to lie inside its buffer for the rows
// the kernel touches, so a plan bug is a typed error, never a kernel reading outside its buffer.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/device.h"

namespace metallic {

constexpr int kMaxLaunchBindings = 16;
constexpr size_t kMaxArgBytes = 64;

// What one [[buffer(i)]] of a launch is bound to.
struct Binding {
  enum class Kind : uint8_t {
    kUnbound,
    kBuffer,  // bytes [buf.host + offset, + extent) of a device buffer (buf.handle: the device's object)
    kBytes,   // a small constant (the argument struct, or a zero for an unused buffer), copied at encode
  };
  Kind kind = Kind::kUnbound;
  Buffer buf;
  size_t offset = 0;
  size_t extent = 0;
  const void* bytes = nullptr;  // kBytes; valid while the Launch is
  uint32_t nbytes = 0;
};

// One kernel dispatch: threads[0] threads per threadgroup (1-D), groups[0] x groups[1] threadgroups.
struct Launch {
  const char* kernel = nullptr;
  uint32_t groups[3] = {1, 1, 1};
  uint32_t threads[3] = {1, 1, 1};
  int n_bindings = 0;  // [[buffer(0)]] .. [[buffer(n_bindings - 1)]] are bound
  Binding bind[kMaxLaunchBindings];
  alignas(16) unsigned char args[kMaxArgBytes];  // the argument struct a kBytes binding points at

  Launch() = default;
  Launch(const Launch&) = delete;  // bindings point into `args`
  Launch& operator=(const Launch&) = delete;

  uint64_t bytes_bound() const;
};

// A Metal device: the plan lives here, the device implements memory and encode().
class MetalPlanDevice : public Device {
 public:
  bool supports(OpCode op, DType dtype) const final;
  void run(const OpCall& call) final;
  DeviceCounters counters() const final { return counters_; }
  int64_t draw_scratch_words(int64_t n_vocab) const final;

 protected:
  // Throws NotImplemented when the model exceeds what the kernels cover (head_dim > 256).
  MetalPlanDevice(const char* where, const DeviceLimits& limits);
  // Binds and dispatches one launch (in issue order: each sees the previous launches' writes).
  virtual void encode(const Launch& launch) = 0;

  const char* where_;  // "metal" or "metal-emulated", the prefix of every error message

 private:
  class Builder;

  void submit(Launch& l);
  void embed(const OpCall& c);
  void rms_norm(const OpCall& c);
  void matmul(const OpCall& c);
  void rope_kv(const OpCall& c);
  void attention(const OpCall& c);
  void swiglu(const OpCall& c);
  bool norm_matmul(const OpCall& c);  // false: not covered by the fused kernel (caller decomposes)
  bool norm_swiglu(const OpCall& c);
  void draw(const OpCall& c);  // kArgmax and kSample

  DeviceCounters counters_;
  bool argmax_ok_;  // the vocabulary fits the two-pass argmax (<= kSampleMaxVocab)
};

}  // namespace metallic
