// A threadgroup variable declared in a helper function: MSL allows them only in a kernel's body.
// expect: threadgroup variable 'scratch' must be declared in a kernel function
#include <metal_stdlib>
using namespace metal;

namespace broken {
inline float stage(float v, uint i) {
  threadgroup float scratch[32];
  scratch[i % 32] = v;
  threadgroup_barrier(mem_flags::mem_threadgroup);
  return scratch[(i + 1) % 32];
}

[[kernel]] void shift(device float* x [[buffer(0)]], uint i [[thread_index_in_threadgroup]]) { x[i] = stage(x[i], i); }
}  // namespace broken
