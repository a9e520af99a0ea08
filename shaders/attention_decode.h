// Attention for one query row per threadgroup, online softmax, GQA: grid = (n_head, n_tokens),
// kAttnSimdgroups * 32 threads. Query t of head h attends to cache positions 0 .. pos0 + t of KV
// head h / (n_head / n_head_kv), position p in row p % kv_capacity (a sliding-window ring wraps).
// Simdgroup s takes positions s, s + kAttnSimdgroups, ...; lane l
// holds dims l, l + 32, ... of q and of its running output. Per position: one simd_sum for the
// score, then the running max / sum / output are rescaled (flash-attention style), so the cache
// is read once. The simdgroups' partial results are merged through threadgroup memory. Cache
// rows are float, half, Q8_0 or Q4_0 (kv_cache.h): lane l's dims l + 32 j are element l of block
// j of a quantized row, dequantized in registers.
#pragma once

#include "args.h"
#include "defines.h"
#include "kv_cache.h"

namespace metallic {

template <typename C>  // cache element: float, half, BlockQ8_0 or BlockQ4_0
[[kernel]] void attention_decode(device const float* q [[buffer(0)]], device const uchar* kc [[buffer(1)]],
                                 device const uchar* vc [[buffer(2)]], device float* out [[buffer(3)]],
                                 constant AttnArgs& a [[buffer(4)]], uint2 tg [[threadgroup_position_in_grid]],
                                 ushort sg [[simdgroup_index_in_threadgroup]],
                                 ushort lane [[thread_index_in_simdgroup]], uint tid [[thread_index_in_threadgroup]]) {
  threadgroup float tg_m[kAttnSimdgroups];
  threadgroup float tg_l[kAttnSimdgroups];
  threadgroup float tg_o[kAttnSimdgroups * kAttnMaxHeadDim];
  const uint h = tg.x, t = tg.y;
  const uint g = h / (a.n_head / a.n_head_kv);
  const uint n_ctx = a.pos0 + t + 1;
  const uint dpl = (a.head_dim + 31) / 32;
  device const float* qh = q + ulong(t) * a.q_stride + h * a.head_dim;
  float qv[kAttnMaxDimsPerLane];
  float o[kAttnMaxDimsPerLane];
  for (uint j = 0; j < dpl; ++j) {
    const uint d = lane + 32 * j;
    qv[j] = d < a.head_dim ? qh[d] * a.scale : 0.f;
    o[j] = 0.f;
  }
  const ulong row_b = kv_row_bytes<C>(a.head_dim);
  device const uchar* kh = kc + ulong(g) * a.kv_capacity * row_b;
  device const uchar* vh = vc + ulong(g) * a.kv_capacity * row_b;
  float m = -INFINITY, l = 0.f;
  const uint lo = a.window > 0 && n_ctx > a.window ? n_ctx - a.window : 0;  // sliding window
  for (uint p = lo + sg; p < n_ctx; p += kAttnSimdgroups) {                 // uniform across the simdgroup
    const ulong r = ulong(p % a.kv_capacity) * row_b;
    device const uchar* kr = kh + r;
    device const uchar* vr = vh + r;
    float s = 0.f;
    for (uint j = 0; j < dpl; ++j) {
      const uint d = lane + 32 * j;
      if (d < a.head_dim) s += qv[j] * kv_load<C>(kr, d);
    }
    s = simd_sum(s);
    if (a.softcap > 0.f) s = a.softcap * tanh(s / a.softcap);
    const float m_new = max(m, s);
    const float corr = exp(m - m_new);
    const float e = exp(s - m_new);
    l = l * corr + e;
    for (uint j = 0; j < dpl; ++j) {
      const uint d = lane + 32 * j;
      if (d < a.head_dim) o[j] = o[j] * corr + e * kv_load<C>(vr, d);
    }
    m = m_new;
  }
  if (lane == 0) {
    tg_m[sg] = m;
    tg_l[sg] = l;
  }
  for (uint j = 0; j < dpl; ++j) {
    const uint d = lane + 32 * j;
    if (d < a.head_dim) tg_o[sg * kAttnMaxHeadDim + d] = o[j];
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
  float mx = -INFINITY;
  for (uint s = 0; s < kAttnSimdgroups; ++s) mx = max(mx, tg_m[s]);
  // A simdgroup that saw no position (a window shorter than the simdgroup count) has m = -inf
  // and l = 0: weight 0 (never exp(-inf - -inf)).
  float sum = 0.f;
  for (uint s = 0; s < kAttnSimdgroups; ++s) sum += tg_l[s] > 0.f ? tg_l[s] * exp(tg_m[s] - mx) : 0.f;
  device float* oh = out + ulong(t) * a.out_stride + h * a.head_dim;
  for (uint d = tid; d < a.head_dim; d += kAttnSimdgroups * 32) {
    float acc = 0.f;
    for (uint s = 0; s < kAttnSimdgroups; ++s)
      if (tg_l[s] > 0.f) acc += tg_o[s * kAttnMaxHeadDim + d] * exp(tg_m[s] - mx);
    oh[d] = acc / sum;
  }
}

}  // namespace metallic
