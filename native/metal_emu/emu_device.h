// The emulated-Metal device: runs the decoder plan through the real shaders/*.metal kernels,
// compiled for the CPU into libmetallic_shaders_emu.so (native/metal_emu/, built by clang-19) and
// called through its C ABI (emu_abi.h). Buffers are host memory, since the emulator runs kernels
// on host pointers; each op becomes one kernel dispatch per weight (matmul) or one per op, with
// the argument structs of shaders/args.h, exactly as the Metal device will encode them.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/device.h"
#include "metal_emu/emu_abi.h"

namespace metallic {

// What the device has issued since construction (or reset_counters): for the benchmark's
// dispatches-per-layer and for bandwidth estimates.
struct EmuCounters {
  uint64_t dispatches = 0;
  uint64_t bytes_bound = 0;  // sum over dispatches of the bytes each bound buffer spans
};

// The resolved C ABI of the emulator library (loaded once per process, never unloaded).
struct EmuApi {
  int (*abi_version)() = nullptr;
  int (*dispatch)(const emu_dispatch_t*, char*, uint64_t) = nullptr;
};

class MetalEmuDevice final : public Device {
 public:
  // Throws DeviceUnavailable when the emulator library cannot be loaded (not built: no clang-19)
  // and NotImplemented when the model exceeds what the kernels cover (head_dim > 256).
  MetalEmuDevice(int threads, const DeviceLimits& limits);
  ~MetalEmuDevice() override;

  const char* name() const override { return "metal-emulated"; }
  Buffer alloc(size_t nbytes) override;
  Buffer wrap_host(const void* ptr, size_t nbytes) override;
  void release(Buffer& buf) override;
  Tensor prepare_weight(const Tensor& view, bool evictable) override;
  void copy_in(const Buffer& dst, size_t offset, const void* src, size_t nbytes) override;
  void copy_out(const Buffer& src, size_t offset, void* dst, size_t nbytes) override;
  bool supports(OpCode op, DType dtype) const override;
  void run(const OpCall& call) override;
  void synchronize() override;

  const EmuCounters& counters() const { return counters_; }
  void reset_counters() { counters_ = EmuCounters{}; }

 private:
  struct Dispatch;  // one kernel launch being assembled (emu_device.cpp)

  void submit(Dispatch& d);
  void embed(const OpCall& c);
  void rms_norm(const OpCall& c);
  void matmul(const OpCall& c);
  void rope_kv(const OpCall& c);
  void attention(const OpCall& c);
  void swiglu(const OpCall& c);

  const EmuApi* api_;
  int workers_;
  EmuCounters counters_;
};

// Factory used by make_device("metal-emulated", ...).
std::unique_ptr<Device> make_metal_emu_device(int threads, const DeviceLimits& limits);

}  // namespace metallic
