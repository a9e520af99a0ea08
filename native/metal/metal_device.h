// The Metal device (Apple only): runs the decoder plan through shaders/*.metal on the system GPU.
// Plain C++ header; all Objective-C lives in metal_device.mm behind this one factory.
#pragma once

#include <memory>

#include "core/device.h"

namespace metallic {

// Factory used by make_device("metal", ...) when METALLIC_HAVE_METAL is defined (Apple builds).
// Throws DeviceUnavailable when the system has no Metal device, NotImplemented when the model
// exceeds what the kernels cover (head_dim > 256). `threads` is unused (the GPU schedules itself).
std::unique_ptr<Device> make_metal_device(int threads, const DeviceLimits& limits);

}  // namespace metallic
