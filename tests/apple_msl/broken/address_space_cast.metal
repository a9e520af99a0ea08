// A cast that moves a pointer to another address space.
// expect: a cast cannot change the address space
#include <metal_stdlib>
using namespace metal;

namespace broken {
[[kernel]] void alias(device float* x [[buffer(0)]], uint i [[thread_index_in_threadgroup]]) {
  threadgroup float staged[32];
  device float* p = (device float*)staged;
  p[i % 32] = x[i];
}
}  // namespace broken
