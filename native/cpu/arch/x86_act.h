// Vectorized gated activations for the SwiGlu op (GELU-tanh for gemma, SiLU otherwise).
#pragma once

#include <cstdint>

namespace metallic::cpu {

// g[i] = act(g[i]) * u[i] for i < n. Each element's value depends on its inputs only (a tail
// shorter than a vector runs through the same vector code), so it is the same whatever range a
// thread is given (batch invariance).
using GateFn = void (*)(int64_t n, float* g, const float* u);

// The AVX2 kernel for GELU-tanh (gelu) or SiLU, or null in builds without AVX2 + FMA.
GateFn gate_fn(bool gelu);

}  // namespace metallic::cpu
