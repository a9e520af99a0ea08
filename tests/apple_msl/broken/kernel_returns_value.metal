// A kernel must return void (MSL spec, "Function qualifiers").
// expect: a kernel function must return void
#include <metal_stdlib>
using namespace metal;

namespace broken {
[[kernel]] float fill(device float* x [[buffer(0)]], uint i [[thread_position_in_grid]]) {
  x[i] = 1.f;
  return x[i];
}
}  // namespace broken
