// A C++20-only construct: concepts do not exist in the C++ MSL is based on.
// expect: unknown type name 'concept'
#include <metal_stdlib>
using namespace metal;

namespace broken {
template <typename T>
concept Small = sizeof(T) <= 4;
}  // namespace broken
