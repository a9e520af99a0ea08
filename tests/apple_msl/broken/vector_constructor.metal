// A vector constructor whose arguments do not add up to the vector's components.
// expect: no matching function for call to 'make_vec'
#include <metal_stdlib>
using namespace metal;

namespace broken {
[[kernel]] void fill(device float4* x [[buffer(0)]], uint i [[thread_position_in_grid]]) { x[i] = float4(1.f, 2.f); }
}  // namespace broken
