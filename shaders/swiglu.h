// SwiGLU: gate[t, i] = silu(gate[t, i]) * up[t, i], in place, float math.
// One thread per element: grid = (ceil(cols / kElementwiseThreads), n_tokens).
#pragma once

#include "args.h"
#include "defines.h"

namespace metallic {

inline float silu(float v) { return v / (1.f + exp(-v)); }
// GELU, tanh approximation (HF "gelu_pytorch_tanh"): 0.5 v (1 + tanh(sqrt(2/pi) (v + 0.044715 v^3))).
inline float gelu_tanh(float v) { return 0.5f * v * (1.f + tanh(0.7978845608f * (v + 0.044715f * v * v * v))); }
inline float gate_act(float v, uint gelu) { return gelu != 0 ? gelu_tanh(v) : silu(v); }

template <typename T>
[[kernel]] void swiglu(device T* gate [[buffer(0)]], device const T* up [[buffer(1)]],
                       constant SwiGluArgs& a [[buffer(2)]], uint2 gid [[thread_position_in_grid]]) {
  if (gid.x >= a.cols) return;
  device T* g = gate + ulong(gid.y) * a.gate_stride + gid.x;
  const float v = float(*g);
  *g = T(gate_act(v, a.gelu) * float(up[ulong(gid.y) * a.up_stride + gid.x]));
}

}  // namespace metallic
