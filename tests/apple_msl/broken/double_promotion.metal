// An unsuffixed literal that promotes float arithmetic to double.
// expect: 'float' converted to 'double': Metal has no double
#include <metal_stdlib>
using namespace metal;

namespace broken {
[[kernel]] void halve(device float* x [[buffer(0)]], uint i [[thread_position_in_grid]]) { x[i] = float(x[i] * 0.5); }
}  // namespace broken
