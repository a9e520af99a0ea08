// A pointer type with no address space: MSL requires one on every pointer and reference.
// expect: pointer type must have explicit address space qualifier
#include <metal_stdlib>
using namespace metal;

namespace broken {
inline float first(const float* p) { return p[0]; }

[[kernel]] void fill(device float* x [[buffer(0)]], uint i [[thread_position_in_grid]]) {
  float v[2] = {1.f, 2.f};
  x[i] = first(v);
}
}  // namespace broken
