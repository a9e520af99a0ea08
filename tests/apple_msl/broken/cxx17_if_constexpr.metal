// A C++17-only construct: MSL 3 is based on C++14 (its compilers accept this only as an extension,
// with a warning), so the check keeps shaders inside C++14.
// expect: constexpr if is incompatible with C\+\+ standards before C\+\+17
#include <metal_stdlib>
using namespace metal;

namespace broken {
template <typename T>
[[kernel]] void fill(device T* x [[buffer(0)]], uint i [[thread_position_in_grid]]) {
  if constexpr (sizeof(T) == 4) x[i] = T(1);
}
}  // namespace broken

template [[host_name("fill_f32")]] [[kernel]] decltype(broken::fill<float>) broken::fill<float>;
