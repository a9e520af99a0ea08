// A library function MSL does not have (simd_sum is the SIMD-group reduction).
// expect: use of undeclared identifier 'simd_reduce_add'
#include <metal_stdlib>
using namespace metal;

namespace broken {
[[kernel]] void total(device float* x [[buffer(0)]], uint i [[thread_position_in_grid]]) {
  x[i] = simd_reduce_add(x[i]);
}
}  // namespace broken
