// A store into the constant address space, which is read-only.
// expect: cannot write to the constant address space
#include <metal_stdlib>
using namespace metal;

namespace broken {
struct Args {
  uint n;
};

[[kernel]] void fill(device float* x [[buffer(0)]], constant Args& a [[buffer(1)]],
                     uint i [[thread_position_in_grid]]) {
  if (i == 0) a.n = 0;
  x[i] = float(a.n);
}
}  // namespace broken
