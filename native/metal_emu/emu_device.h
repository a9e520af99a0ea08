// The emulated-Metal device: runs the decoder plan through the real shaders/*.metal kernels,
// compiled for the CPU into libmetallic_shaders_emu.so (native/metal_emu/, built by clang-19) and
// called through its C ABI (emu_abi.h). Buffers are host memory, since the emulator runs kernels
// on host pointers. The plan (which kernels, grids, bindings, argument structs) is the shared
// Metal plan (native/metal_plan/plan.h), exactly what the Metal device encodes.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/device.h"
#include "metal_emu/emu_abi.h"
#include "metal_plan/plan.h"

namespace metallic {

// The resolved C ABI of the emulator library (loaded once per process, never unloaded).
struct EmuApi {
  int (*abi_version)() = nullptr;
  int (*dispatch)(const emu_dispatch_t*, char*, uint64_t) = nullptr;
};

class MetalEmuDevice final : public MetalPlanDevice {
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
  void synchronize() override;

 protected:
  void encode(const Launch& launch) override;

 private:
  const EmuApi* api_;
  int workers_;
};

// Factory used by make_device("metal-emulated", ...).
std::unique_ptr<Device> make_metal_emu_device(int threads, const DeviceLimits& limits);

}  // namespace metallic
