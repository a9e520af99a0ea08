// A kernel parameter with no Metal attribute: the host binds buffers by index, so the check
// requires [[buffer(i)]] (MSL would assign one implicitly) and MSL itself requires an attribute
// on every other kernel input.
// expect: kernel parameter 'n' needs \[\[buffer\(i\)\]\], \[\[threadgroup\(i\)\]\] or a built-in input attribute
#include <metal_stdlib>
using namespace metal;

namespace broken {
[[kernel]] void fill(device float* x [[buffer(0)]], uint n, uint i [[thread_position_in_grid]]) {
  if (i < n) x[i] = 1.f;
}
}  // namespace broken
