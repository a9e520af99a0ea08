// Factory of the CPU device (cpu_device.cpp); the only thing other layers see of it.
#pragma once

#include <memory>

#include "core/device.h"

namespace metallic {

// threads: worker threads of the device's pool (>= 1; the factory resolves <= 0).
std::unique_ptr<Device> make_cpu_device(int threads, const DeviceLimits& limits);

}  // namespace metallic
