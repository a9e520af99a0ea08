// RMSNorm: out[r] = x[r] * rsqrt(mean(x[r]^2) + eps) * w, accumulated in float.
// One threadgroup per row (grid = n_rows); its threads stride the row, each simdgroup reduces its
// partial sum with simd_sum, and every thread then adds the simdgroup partials from threadgroup
// memory in the same order (so all threads use the identical scale).
#pragma once

#include "args.h"
#include "defines.h"

namespace metallic {

template <typename T>
[[kernel]] void rms_norm(device const T* x [[buffer(0)]], device const float* w [[buffer(1)]],
                         device T* out [[buffer(2)]], constant RmsNormArgs& a [[buffer(3)]],
                         uint row [[threadgroup_position_in_grid]], uint tid [[thread_index_in_threadgroup]],
                         uint ntg [[threads_per_threadgroup]], ushort sg [[simdgroup_index_in_threadgroup]],
                         ushort lane [[thread_index_in_simdgroup]], ushort nsg [[simdgroups_per_threadgroup]]) {
  threadgroup float partial[32];
  device const T* xr = x + ulong(row) * a.x_stride;
  float ss = 0.f;
  for (uint i = tid; i < a.n; i += ntg) {
    const float v = float(xr[i]);
    ss += v * v;
  }
  ss = simd_sum(ss);
  if (lane == 0) partial[sg] = ss;
  threadgroup_barrier(mem_flags::mem_threadgroup);
  float total = 0.f;
  for (ushort s = 0; s < nsg; ++s) total += partial[s];
  const float r = rsqrt(total / float(a.n) + a.eps);
  device T* o = out + ulong(row) * a.out_stride;
  for (uint i = tid; i < a.n; i += ntg) o[i] = T(float(xr[i]) * r * w[i]);
}

}  // namespace metallic
