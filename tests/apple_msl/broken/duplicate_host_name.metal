// Two kernels under one host name: the pipeline lookup by name would be ambiguous.
// expect: host name 'scale_f32' names two kernels
#include <metal_stdlib>
using namespace metal;

namespace broken {
template <typename T>
[[kernel]] void scale(device T* x [[buffer(0)]], uint i [[thread_position_in_grid]]) {
  x[i] = x[i] * T(2);
}
}  // namespace broken

template [[host_name("scale_f32")]] [[kernel]] decltype(broken::scale<float>) broken::scale<float>;
template [[host_name("scale_f32")]] [[kernel]] decltype(broken::scale<half>) broken::scale<half>;
