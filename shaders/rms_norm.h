// RMSNorm: out[r] = x[r] * rsqrt(mean(x[r]^2) + eps) * w, accumulated in float.
// One threadgroup per row (grid = n_rows); its threads stride the row, each simdgroup reduces its
// partial sum with simd_sum, and every thread then adds the simdgroup partials from threadgroup
// memory in the same order (so all threads use the identical scale).
#pragma once

#include "args.h"
#include "defines.h"

namespace metallic {

// 1 / sqrt(mean(x[0..n)^2) + eps) over a row, by a whole threadgroup (ntg threads, nsg simdgroups,
// nsg <= 32): lanes stride the row, simd_sum per simdgroup, partials through threadgroup memory,
// then every thread adds them in the same order, so all threads return the identical scale.
// Every thread of the threadgroup must call it (it holds a barrier); `partial` has >= nsg slots.
template <typename P>
inline float rms_scale(P xr, uint n, float eps, threadgroup float* partial, uint tid, uint ntg, ushort sg, ushort lane,
                       ushort nsg) {
  float ss = 0.f;
  for (uint i = tid; i < n; i += ntg) {
    const float v = float(xr[i]);
    ss += v * v;
  }
  ss = simd_sum(ss);
  if (lane == 0) partial[sg] = ss;
  threadgroup_barrier(mem_flags::mem_threadgroup);
  float total = 0.f;
  for (ushort s = 0; s < nsg; ++s) total += partial[s];
  return rsqrt(total / float(n) + eps);
}

template <typename T>
[[kernel]] void rms_norm(device const T* x [[buffer(0)]], device const float* w [[buffer(1)]],
                         device T* out [[buffer(2)]], constant RmsNormArgs& a [[buffer(3)]],
                         uint row [[threadgroup_position_in_grid]], uint tid [[thread_index_in_threadgroup]],
                         uint ntg [[threads_per_threadgroup]], ushort sg [[simdgroup_index_in_threadgroup]],
                         ushort lane [[thread_index_in_simdgroup]], ushort nsg [[simdgroups_per_threadgroup]]) {
  threadgroup float partial[32];
  device const T* xr = x + ulong(row) * a.x_stride;
  const float r = rms_scale(xr, a.n, a.eps, partial, tid, ntg, sg, lane, nsg);
  device T* o = out + ulong(row) * a.out_stride;
  if (a.accumulate != 0) {  // uniform: a post-norm adding into the residual stream
    for (uint i = tid; i < a.n; i += ntg) o[i] = T(float(o[i]) + float(xr[i]) * r * w[i]);
  } else {
    for (uint i = tid; i < a.n; i += ntg) o[i] = T(float(xr[i]) * r * w[i]);
  }
}

}  // namespace metallic
