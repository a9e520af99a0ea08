// goto is not part of MSL (MSL spec, C++ "Restrictions").
// expect: 'goto' is not supported in Metal
#include <metal_stdlib>
using namespace metal;

namespace broken {
[[kernel]] void fill(device float* x [[buffer(0)]], uint i [[thread_position_in_grid]]) {
  if (i > 1024) goto done;
  x[i] = 1.f;
done:
  return;
}
}  // namespace broken
