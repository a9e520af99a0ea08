// Included first by every .metal file: the standard library and the one instantiation macro.
//
//   METALLIC_KERNEL("rms_norm_f32", rms_norm, float)
// instantiates the kernel template `rms_norm<float>` under the host name "rms_norm_f32" (names are
// <family>[_<variant>]_<dtype>, built on the host by metallic::shaders::kernel_name). On Apple this
// is an explicit [[host_name]] instantiation; in the emulator (METALLIC_EMU, set by its
// metal_stdlib) it registers the launcher rewrite.py generated for the template. `func` is the
// unqualified name of a kernel template in namespace metallic: the .metal files expand the macro at
// global scope, where an explicit instantiation must name the template qualified (C++11
// [temp.explicit]; scripts/check_msl_apple.py compiles this branch).
#pragma once

#include <metal_stdlib>

#ifdef METALLIC_EMU
#define METALLIC_KERNEL(name, func, ...) \
  static ::emu::Registrar EMU_CAT(emu_reg_, __COUNTER__)(name, __emu_info_##func<__VA_ARGS__>());
#else
#define METALLIC_KERNEL(name, func, ...) \
  template [[host_name(name)]] [[kernel]] decltype(metallic::func<__VA_ARGS__>) metallic::func<__VA_ARGS__>;
#endif

using namespace metal;
