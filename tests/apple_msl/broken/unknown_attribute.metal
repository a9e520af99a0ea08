// A misspelt Metal attribute: unknown to MSL, so the parameter has no binding at all.
// expect: unknown attribute 'bufer' ignored
// expect: kernel parameter 'x' needs \[\[buffer\(i\)\]\], \[\[threadgroup\(i\)\]\] or a built-in input attribute
#include <metal_stdlib>
using namespace metal;

namespace broken {
[[kernel]] void fill(device float* x [[bufer(0)]], uint i [[thread_position_in_grid]]) { x[i] = 1.f; }
}  // namespace broken
