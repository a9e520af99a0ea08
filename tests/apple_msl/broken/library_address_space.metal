// A library function given a pointer into an address space it does not take: simdgroup_load
// reads device or threadgroup memory, not a thread array.
// expect: no matching function for call to 'simdgroup_load'
#include <metal_stdlib>
using namespace metal;

namespace broken {
[[kernel]] void tile(device float* out [[buffer(0)]]) {
  float local[64];
  for (uint j = 0; j < 64; ++j) local[j] = float(j);
  simdgroup_float8x8 m;
  simdgroup_load(m, local, 8);
  simdgroup_store(m, out, 8);
}
}  // namespace broken
