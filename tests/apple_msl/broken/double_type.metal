// MSL has no double (MSL spec, "Scalar data types").
// expect: variable of type 'double': Metal has no 'double'
// expect: 'int' converted to 'double': Metal has no double
#include <metal_stdlib>
using namespace metal;

namespace broken {
[[kernel]] void fill(device float* x [[buffer(0)]], uint i [[thread_position_in_grid]]) {
  double scale = 2;
  x[i] = float(scale);
}
}  // namespace broken
