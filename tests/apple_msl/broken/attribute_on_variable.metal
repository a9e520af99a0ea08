// A built-in input attribute on a local variable instead of a kernel parameter.
// expect: 'thread_position_in_grid' attribute only applies to kernel function parameters
#include <metal_stdlib>
using namespace metal;

namespace broken {
[[kernel]] void fill(device float* x [[buffer(0)]], uint i [[thread_position_in_grid]]) {
  uint j [[thread_position_in_grid]] = i;
  x[j] = 1.f;
}
}  // namespace broken
