// MSL forms the check must accept (none of them used by shaders/ today): the `kernel` keyword, an
// explicit instantiation with a full signature, threadgroup parameters and struct arrays, `thread`
// written after the type, constant program-scope data, swizzle assignment, the library's device and
// threadgroup overloads. tests/python/test_apple_msl.py requires it to pass.
#include <metal_stdlib>
using namespace metal;

constant float kScale = 2.f;
constant constexpr int kLanes = 32;
constant uint kTable[4] = {1, 2, 3, 4};

struct Partial {
  float sum;
  uint count;
};

inline float read(thread const float* p, threadgroup const float* q, constant Partial& c) {
  return p[0] + q[0] + c.sum;
}
inline threadgroup float* advance(threadgroup float* p, uint i) { return p + i; }
inline float first(float const thread* p) { return p[0]; }

kernel void forms(device float* x [[buffer(0)]], constant Partial& c [[buffer(1)]],
                  threadgroup float* scratch [[threadgroup(0)]], uint2 gid [[thread_position_in_grid]],
                  uint2 grid [[threads_per_grid]], ushort lane [[thread_index_in_simdgroup]],
                  uint tid [[thread_index_in_threadgroup]], ushort sg [[simdgroup_index_in_threadgroup]]) {
  threadgroup Partial partials[kLanes];
  threadgroup float tile[64];
  threadgroup float* cursor = tile;
  thread float t = 1.f;
  thread float* pt = &t;
  float v[4] = {1.f, 2.f, 3.f, 4.f};
  const device float* cx = x;
  float4 q = float4(float2(1.f, 2.f), 3.f, 4.f);
  q.xy = q.zw;
  half h = 0.5h;
  partials[lane].sum = x[tid] * kScale + float(kTable[tid % 4]);
  partials[lane].count = 1;
  tile[tid % 64] = float(h) + q.r + first(v);
  threadgroup_barrier(mem_flags::mem_threadgroup | mem_flags::mem_device);
  const float s = simd_sum(partials[lane].sum) + simd_shuffle_xor(q, ushort(1)).x;
  scratch[sg] = s + read(pt, advance(cursor, 1), c) + cx[0];
  x[gid.x + grid.y] = precise::exp(scratch[0]) + fast::exp(tile[1]) + max(tile[2], 0.f) + float(min(tid, 3u));
}

template <typename T>
kernel void fill(device T* x [[buffer(0)]], uint i [[thread_position_in_grid]]) {
  x[i] = T(1);
}
template [[host_name("fill_f32")]] kernel void fill<float>(device float*, uint);
template [[host_name("fill_f16")]] kernel decltype(fill<half>) fill<half>;

namespace tiles {
template <typename T>
[[kernel]] void square(device T* x [[buffer(0)]], uint i [[thread_index_in_threadgroup]]) {
  threadgroup simdgroup_float8x8 keep[1];
  threadgroup float stage[64];
  stage[i % 64] = float(x[i]);
  threadgroup_barrier(mem_flags::mem_threadgroup);
  simdgroup_float8x8 m = make_filled_simdgroup_matrix<float, 8, 8>(0.f);
  simdgroup_load(m, stage, 8);
  simdgroup_multiply_accumulate(m, m, m, m);
  simdgroup_store(m, stage, 8, ulong2(0, 0), true);
  (void)keep;
  x[i] = T(stage[i % 64]);
}
}  // namespace tiles
template [[host_name("square_f32")]] [[kernel]] decltype(tiles::square<float>) tiles::square<float>;
