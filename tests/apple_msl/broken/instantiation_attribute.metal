// An attribute other than host_name and kernel in an explicit instantiation's attribute list.
// expect: an attribute list cannot appear here
// expect: the attribute list of an explicit instantiation may hold only \[\[host_name\("name"\)\]\] and \[\[kernel\]\]
#include <metal_stdlib>
using namespace metal;

namespace broken {
template <typename T>
[[kernel]] void scale(device T* x [[buffer(0)]], uint i [[thread_position_in_grid]]) {
  x[i] = x[i] * T(2);
}
}  // namespace broken

template [[host_name("scale_f32")]] [[buffer(0)]] decltype(broken::scale<float>) broken::scale<float>;
