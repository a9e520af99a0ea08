// MSL has no run-time type information (MSL spec, C++ "Restrictions": no dynamic_cast, no typeid).
// expect: use of dynamic_cast requires -frtti
// expect: 'broken::Base' is not polymorphic
#include <metal_stdlib>
using namespace metal;

namespace broken {
struct Base {
  int tag;
};
struct Derived : Base {};

[[kernel]] void fill(device int* x [[buffer(0)]], uint i [[thread_position_in_grid]]) {
  Derived d;
  d.tag = 1;
  thread Base* b = &d;
  x[i] = dynamic_cast<thread Derived*>(b)->tag;
}
}  // namespace broken
