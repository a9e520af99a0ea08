// MSL has no exception handling (MSL spec, C++ "Restrictions").
// expect: cannot use 'throw' with exceptions disabled
#include <metal_stdlib>
using namespace metal;

namespace broken {
[[kernel]] void fill(device float* x [[buffer(0)]], uint i [[thread_position_in_grid]]) {
  if (i > 1024) throw 1;
  x[i] = 1.f;
}
}  // namespace broken
