// The defect of issue #10: shaders/defines.h's Apple branch before the fix. Every kernel template
// lives in namespace metallic, the .metal files expand METALLIC_KERNEL at global scope, and an
// explicit instantiation there must name the template qualified (C++11 [temp.explicit]); Apple's
// compiler, like any clang, rejects the unqualified form in every shader.
// expect: explicit instantiation of 'metallic::scale' must occur in namespace 'metallic'
#include <metal_stdlib>
using namespace metal;

#define METALLIC_KERNEL(name, func, ...) \
  template [[host_name(name)]] [[kernel]] decltype(func<__VA_ARGS__>) func<__VA_ARGS__>;

namespace metallic {
template <typename T>
[[kernel]] void scale(device T* x [[buffer(0)]], uint i [[thread_position_in_grid]]) {
  x[i] = x[i] * T(2);
}
}  // namespace metallic

using namespace metallic;

METALLIC_KERNEL("scale_f32", scale, float)
