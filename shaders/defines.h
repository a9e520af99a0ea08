// Included first by every .metal file: the standard library and the one instantiation macro.
//
//   METALLIC_KERNEL("rms_norm_f32", rms_norm, float)
// instantiates the kernel template `rms_norm<float>` under the host name "rms_norm_f32" (names are
// <family>[_<variant>]_<dtype>, built on the host by metallic::shaders::kernel_name). On Apple this
// is an explicit [[host_name]] instantiation; in the emulator (METALLIC_EMU, set by its
// metal_stdlib) it registers the launcher rewrite.py generated for the template.
#pragma once

#include <metal_stdlib>

#ifdef METALLIC_EMU
#define METALLIC_KERNEL(name, func, ...) \
  static ::emu::Registrar EMU_CAT(emu_reg_, __COUNTER__)(name, __emu_info_##func<__VA_ARGS__>());
#else
#define METALLIC_KERNEL(name, func, ...) \
  template [[host_name(name)]] [[kernel]] decltype(func<__VA_ARGS__>) func<__VA_ARGS__>;
#endif

using namespace metal;
