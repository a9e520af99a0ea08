// make_device (core/device.h): maps a device name to the device's own factory. Each device is
// reached only through its factory header, so no device depends on another.
#include <string>
#include <thread>

#include "core/device.h"
#include "core/error.h"
#include "cpu/cpu_device.h"
#include "metal/metal_device.h"
#include "metal_emu/emu_device.h"

namespace metallic {

std::unique_ptr<Device> make_device(const std::string& n, int threads, const DeviceLimits& limits) {
  if (threads <= 0) {
    const unsigned hc = std::thread::hardware_concurrency();
    threads = hc == 0 ? 1 : static_cast<int>(hc);
  }
  if (n == "cpu") return make_cpu_device(threads, limits);
  if (n == "metal-emulated") return make_metal_emu_device(threads, limits);
#ifdef METALLIC_HAVE_METAL
  if (n == "metal") return make_metal_device(threads, limits);
#endif
  if (n == "metal")
    fail(ErrorCode::kDeviceUnavailable, "device",
         "device 'metal' is not available in this build (the Metal device is built only on macOS; "
         "device='metal-emulated' runs the same shaders and plan on the CPU)");
  fail(ErrorCode::kInvalidArgument, "device", "unknown device '" + n + "': expected cpu, metal or metal-emulated");
}

}  // namespace metallic
