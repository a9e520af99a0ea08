// The emulator runtime as the generated kernel launchers and the C API see it.
//
// rewrite.py turns each kernel's parameter list into a table of ParamInfo (which [[buffer(i)]],
// [[threadgroup(i)]] or built-in id feeds each parameter) and a launcher that calls the kernel
// for one lane. The runtime validates a dispatch against that table, then runs every threadgroup
// as cooperative fibers (one threadgroup per OS thread at a time) so barriers and simd_*
// collectives behave as on the GPU.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "emu_abi.h"

namespace emu {

enum class ParamKind : int32_t { kBuffer, kThreadgroup, kBuiltin };

enum class Builtin : int32_t {
  kThreadPositionInGrid,
  kThreadPositionInThreadgroup,
  kThreadgroupPositionInGrid,
  kThreadsPerThreadgroup,
  kThreadgroupsPerGrid,
  kThreadsPerGrid,
  kThreadIndexInThreadgroup,
  kThreadIndexInSimdgroup,
  kSimdgroupIndexInThreadgroup,
  kThreadsPerSimdgroup,
  kSimdgroupsPerThreadgroup,
};

struct ParamInfo {
  ParamKind kind;
  int32_t index;     // buffer / threadgroup index, or the Builtin
  const char* name;  // parameter name in the .metal source
  size_t ref_bytes;  // bytes the kernel reads through a reference parameter (0 for pointers)
};

// Everything one lane's launcher needs.
struct LaneCtx {
  const emu_buffer* buffers;  // (EMU_MAX_BUFFERS,)
  void* const* tg_mem;        // (EMU_MAX_TG_MEM,)
  uint32_t v[11][3];          // built-in ids, indexed by Builtin
};

using LaunchFn = void (*)(const LaneCtx&);

struct KernelInfo {
  const ParamInfo* params;
  int n_params;
  LaunchFn launch;
  const char* file;  // .metal / .h file that defines the kernel
};

// Registers a kernel under its host name at library load (METALLIC_KERNEL in emulation).
struct Registrar {
  Registrar(const char* name, const KernelInfo& info);
};

template <typename P>
constexpr size_t ref_size() {
  if constexpr (std::is_reference_v<P>) {
    return sizeof(std::remove_reference_t<P>);
  } else {
    return 0;
  }
}

template <typename P>
inline P buffer_arg(const LaneCtx& c, int i) {
  if constexpr (std::is_reference_v<P>) {
    return *static_cast<std::remove_reference_t<P>*>(c.buffers[i].ptr);
  } else {
    return static_cast<P>(c.buffers[i].ptr);
  }
}

template <typename P>
inline P tg_arg(const LaneCtx& c, int i) {
  return static_cast<P>(c.tg_mem[i]);
}

template <typename P>
inline P builtin_arg(const LaneCtx& c, Builtin b) {
  const uint32_t* v = c.v[static_cast<int>(b)];
  using D = std::remove_cvref_t<P>;
  if constexpr (std::is_arithmetic_v<D>) {
    return static_cast<D>(v[0]);
  } else {
    D r{};
    constexpr int n = sizeof(D) / sizeof(r[0]) >= 3 ? 3 : sizeof(D) / sizeof(r[0]);
    for (int k = 0; k < n; ++k) r[k] = static_cast<std::remove_cvref_t<decltype(r[0])>>(v[k]);
    return r;
  }
}

}  // namespace emu

#define EMU_CAT2(a, b) a##b
#define EMU_CAT(a, b) EMU_CAT2(a, b)
