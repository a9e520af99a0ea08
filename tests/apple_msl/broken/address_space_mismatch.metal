// A threadgroup array passed where a device pointer is expected: MSL's address spaces do not
// convert into one another.
// expect: no matching function for call to 'store'
// expect: no known conversion from 'threadgroup float\[32\]' to 'device float \*'
#include <metal_stdlib>
using namespace metal;

namespace broken {
inline void store(device float* out, uint i, float v) { out[i] = v; }

[[kernel]] void copy(device float* out [[buffer(0)]], uint i [[thread_index_in_threadgroup]]) {
  threadgroup float staged[32];
  staged[i % 32] = out[i];
  threadgroup_barrier(mem_flags::mem_threadgroup);
  store(staged, i % 32, 1.f);
}
}  // namespace broken
