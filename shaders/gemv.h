// Decode GEMV: out[t, r] (+)= W[r, :] . x[t, :] (+ bias[r]), float accumulation.
// grid = (ceil(rows / kGemvRowsPerGroup), n_tokens), kGemvSimdgroups * 32 threads. Simdgroup s of
// group g computes rows (g * kGemvSimdgroups + s) * kGemvRowsPerSimdgroup + k; lane l takes
// blocks l, l + 32, ... of the row (consecutive lanes read consecutive blocks), then simd_sum.
// `accumulate` turns the store into the residual add of the transformer block.
#pragma once

#include "args.h"
#include "quant.h"

namespace metallic {

template <typename W>
[[kernel]] void gemv(device const uchar* w [[buffer(0)]], device const float* x [[buffer(1)]],
                     device const float* bias [[buffer(2)]], device float* out [[buffer(3)]],
                     constant GemvArgs& a [[buffer(4)]], uint2 tg [[threadgroup_position_in_grid]],
                     ushort sg [[simdgroup_index_in_threadgroup]], ushort lane [[thread_index_in_simdgroup]]) {
  const uint nb = a.cols / uint(Fmt<W>::kElems);
  device const float* xt = x + ulong(tg.y) * a.x_stride;
  for (uint k = 0; k < kGemvRowsPerSimdgroup; ++k) {
    const uint r = (tg.x * kGemvSimdgroups + sg) * kGemvRowsPerSimdgroup + k;
    if (r >= a.rows) break;  // uniform across the simdgroup
    device const uchar* row = w + ulong(r) * a.row_bytes;
    float s = 0.f;
    for (uint b = lane; b < nb; b += 32) s += Fmt<W>::dot(row + ulong(b) * Fmt<W>::kBytes, xt + b * Fmt<W>::kElems);
    s = simd_sum(s);
    if (lane == 0) {
      const float v = s + (a.has_bias != 0 ? bias[r] : 0.f);
      device float* o = out + ulong(tg.y) * a.out_stride + r;
      *o = a.accumulate != 0 ? *o + v : v;
    }
  }
}

}  // namespace metallic
