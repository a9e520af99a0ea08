// A namespace-scope constexpr outside the constant address space (what native/core/quant_blocks.h
// had: MSL keeps every program-scope variable in `constant`).
// expect: program scope variable must reside in constant address space
#include <metal_stdlib>
using namespace metal;

namespace broken {
constexpr int kBlock = 32;

[[kernel]] void fill(device int* x [[buffer(0)]], uint i [[thread_position_in_grid]]) { x[i] = kBlock; }
}  // namespace broken
