// A threadgroup variable with an initializer: threadgroup memory is not initialized in MSL.
// expect: threadgroup variable cannot have an initializer
#include <metal_stdlib>
using namespace metal;

namespace broken {
[[kernel]] void count(device uint* x [[buffer(0)]], uint i [[thread_index_in_threadgroup]]) {
  threadgroup uint total = 0;
  if (i == 0) x[0] = total;
}
}  // namespace broken
