// Two parameters bound to the same buffer slot.
// expect: \[\[buffer\(0\)\]\] is used by two parameters of this kernel
#include <metal_stdlib>
using namespace metal;

namespace broken {
[[kernel]] void add(device float* x [[buffer(0)]], device const float* y [[buffer(0)]],
                    uint i [[thread_position_in_grid]]) {
  x[i] += y[i];
}
}  // namespace broken
