// Row-wise softmax: out[r] = softmax(scale * x[r]), accumulated in float, numerically stable.
// grid = (n_rows), any multiple of 32 threads up to 1024 (256 is a good default); one threadgroup
// per row, whatever its length (rows up to 262144 and beyond: its threads stride the row). Three
// passes over the row: the maximum m of scale * x, the sum s of exp(scale * x - m), then
// out = exp(scale * x - m) / s. Each simdgroup reduces with simd_max / simd_sum and every thread
// combines the simdgroup partials from threadgroup memory in the same order, so all threads use
// identical m and s. A row with no finite maximum (all -inf) gives NaN, as the formula does.
#pragma once

#include "args.h"
#include "defines.h"

namespace metallic {

template <typename T>
[[kernel]] void softmax(device const T* x [[buffer(0)]], device T* out [[buffer(1)]],
                        constant SoftmaxArgs& a [[buffer(2)]], uint row [[threadgroup_position_in_grid]],
                        uint tid [[thread_index_in_threadgroup]], uint ntg [[threads_per_threadgroup]],
                        ushort sg [[simdgroup_index_in_threadgroup]], ushort lane [[thread_index_in_simdgroup]],
                        ushort nsg [[simdgroups_per_threadgroup]]) {
  threadgroup float part_max[32];
  threadgroup float part_sum[32];
  device const T* xr = x + ulong(row) * a.x_stride;
  float m = -INFINITY;
  for (uint i = tid; i < a.n; i += ntg) m = max(m, a.scale * float(xr[i]));
  m = simd_max(m);
  if (lane == 0) part_max[sg] = m;
  threadgroup_barrier(mem_flags::mem_threadgroup);
  m = -INFINITY;
  for (ushort s = 0; s < nsg; ++s) m = max(m, part_max[s]);
  float sum = 0.f;
  for (uint i = tid; i < a.n; i += ntg) sum += precise::exp(a.scale * float(xr[i]) - m);
  sum = simd_sum(sum);
  if (lane == 0) part_sum[sg] = sum;
  threadgroup_barrier(mem_flags::mem_threadgroup);
  sum = 0.f;
  for (ushort s = 0; s < nsg; ++s) sum += part_sum[s];
  device T* o = out + ulong(row) * a.out_stride;
  for (uint i = tid; i < a.n; i += ntg) o[i] = T(precise::exp(a.scale * float(xr[i]) - m) / sum);
}

}  // namespace metallic
