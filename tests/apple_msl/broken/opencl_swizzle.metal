// An OpenCL vector accessor clang knows and MSL does not (MSL: xyzw or rgba only).
// expect: '\.lo' is not a Metal vector swizzle
#include <metal_stdlib>
using namespace metal;

namespace broken {
[[kernel]] void low(device float2* x [[buffer(0)]], device const float4* y [[buffer(1)]],
                    uint i [[thread_position_in_grid]]) {
  x[i] = y[i].lo;
}
}  // namespace broken
