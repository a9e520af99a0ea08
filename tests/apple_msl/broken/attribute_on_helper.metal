// [[buffer(i)]] on a parameter of a function that is not a kernel: MSL binds buffers only to
// kernel (and vertex/fragment) parameters.
// expect: 'buffer' attribute only applies to parameters of a \[\[kernel\]\] function
#include <metal_stdlib>
using namespace metal;

namespace broken {
inline float load(device const float* x [[buffer(1)]], uint i) { return x[i]; }

[[kernel]] void twice(device float* x [[buffer(0)]], uint i [[thread_position_in_grid]]) { x[i] = 2.f * load(x, i); }
}  // namespace broken
