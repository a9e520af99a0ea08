// A C++20-only construct clang accepts in C++17 as an extension: designated initializers.
// expect: designated initializers are a C\+\+20 extension
#include <metal_stdlib>
using namespace metal;

namespace broken {
struct Range {
  uint begin, end;
};

[[kernel]] void fill(device uint* x [[buffer(0)]], uint i [[thread_position_in_grid]]) {
  Range r = {.begin = 0, .end = 16};
  x[i] = r.end - r.begin;
}
}  // namespace broken
