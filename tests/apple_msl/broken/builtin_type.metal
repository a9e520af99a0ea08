// A built-in input of a type MSL does not define for it: thread_index_in_simdgroup is uint or ushort.
// expect: \[\[thread_index_in_simdgroup\]\] parameter 'lane' must be uint or ushort
#include <metal_stdlib>
using namespace metal;

namespace broken {
[[kernel]] void lanes(device float* x [[buffer(0)]], float lane [[thread_index_in_simdgroup]]) { x[0] = lane; }
}  // namespace broken
