// RMSNorm fused into the decode GEMVs that read its output (the transformer block's two norms):
//
//   gemv_norm:        out_i[t, r] = W_i[r] . xn + (bias_i[r]),  i < 3 weights of one format (q, k, v)
//   gemv_norm_swiglu: out[t, r]   = act(W_gate[r] . xn) * (W_up[r] . xn), act SiLU or GELU-tanh
//
// with xn = x[t] * rsqrt(mean(x[t]^2) + eps) * norm_w. grid = (ceil(total rows /
// kFusedRowsPerGroup), n_tokens), kFusedSimdgroups * 32 threads. Each threadgroup recomputes its
// token's norm (rms_scale, as rms_norm does), writes xn into threadgroup memory (cols <=
// kFusedNormMaxCols), then simdgroup s takes rows (g * kFusedSimdgroups + s) * kFusedRowsPerSimdgroup
// + k; lane l takes blocks l, l + 32, ... of a row (as gemv does), then simd_sum. One dispatch
// instead of rms_norm + 3 gemv (or rms_norm + 2 gemv + swiglu); the norm costs cols reads of x per
// threadgroup, amortized over kFusedRowsPerGroup rows.
#pragma once

#include "args.h"
#include "quant.h"
#include "rms_norm.h"
#include "swiglu.h"

namespace metallic {

// xn = x * scale * w into threadgroup memory; every thread of the threadgroup calls it.
inline void fused_norm_row(device const float* xt, device const float* nw, uint cols, float eps, threadgroup float* xn,
                           threadgroup float* partial, uint tid, ushort sg, ushort lane) {
  const uint ntg = kFusedSimdgroups * 32;
  const float r = rms_scale(xt, cols, eps, partial, tid, ntg, sg, lane, ushort(kFusedSimdgroups));
  for (uint i = tid; i < cols; i += ntg) xn[i] = xt[i] * r * nw[i];
  threadgroup_barrier(mem_flags::mem_threadgroup);
}

// Row `row` (row_bytes apart) of W against xn: the lane-strided block loop of gemv, then simd_sum.
template <typename W>
inline float fused_row_dot(device const uchar* w, uint row, uint row_bytes, uint nb, threadgroup const float* xn,
                           ushort lane) {
  device const uchar* wr = w + ulong(row) * row_bytes;
  float s = 0.f;
  for (uint b = lane; b < nb; b += 32) s += Fmt<W>::dot(wr + ulong(b) * Fmt<W>::kBytes, xn + b * Fmt<W>::kElems);
  return simd_sum(s);
}

template <typename W>
[[kernel]] void gemv_norm(device const uchar* w0 [[buffer(0)]], device const uchar* w1 [[buffer(1)]],
                          device const uchar* w2 [[buffer(2)]], device const float* x [[buffer(3)]],
                          device const float* nw [[buffer(4)]], device const float* b0 [[buffer(5)]],
                          device const float* b1 [[buffer(6)]], device const float* b2 [[buffer(7)]],
                          device float* o0 [[buffer(8)]], device float* o1 [[buffer(9)]],
                          device float* o2 [[buffer(10)]], constant GemvNormArgs& a [[buffer(11)]],
                          uint2 tg [[threadgroup_position_in_grid]], uint tid [[thread_index_in_threadgroup]],
                          ushort sg [[simdgroup_index_in_threadgroup]], ushort lane [[thread_index_in_simdgroup]]) {
  threadgroup float xn[kFusedNormMaxCols];
  threadgroup float partial[kFusedSimdgroups];
  fused_norm_row(x + ulong(tg.y) * a.x_stride, nw, a.cols, a.eps, xn, partial, tid, sg, lane);
  const uint nb = a.cols / uint(Fmt<W>::kElems);
  const uint total = a.rows0 + a.rows1 + a.rows2;
  for (uint k = 0; k < kFusedRowsPerSimdgroup; ++k) {
    const uint g = (tg.x * kFusedSimdgroups + sg) * kFusedRowsPerSimdgroup + k;
    if (g >= total) break;  // uniform across the simdgroup
    // Which weight the global row falls in (uniform across the simdgroup).
    const uint which = g < a.rows0 ? 0u : (g < a.rows0 + a.rows1 ? 1u : 2u);
    const uint r = which == 0 ? g : (which == 1 ? g - a.rows0 : g - a.rows0 - a.rows1);
    device const uchar* w = which == 0 ? w0 : (which == 1 ? w1 : w2);
    const uint rb = which == 0 ? a.row_bytes0 : (which == 1 ? a.row_bytes1 : a.row_bytes2);
    const float s = fused_row_dot<W>(w, r, rb, nb, xn, lane);
    if (lane == 0) {
      device const float* bias = which == 0 ? b0 : (which == 1 ? b1 : b2);
      device float* out = which == 0 ? o0 : (which == 1 ? o1 : o2);
      const uint os = which == 0 ? a.out_stride0 : (which == 1 ? a.out_stride1 : a.out_stride2);
      out[ulong(tg.y) * os + r] = s + ((a.has_bias >> which) & 1u ? bias[r] : 0.f);
    }
  }
}

template <typename W>
[[kernel]] void gemv_norm_swiglu(device const uchar* wg [[buffer(0)]], device const uchar* wu [[buffer(1)]],
                                 device const float* x [[buffer(2)]], device const float* nw [[buffer(3)]],
                                 device float* out [[buffer(4)]], constant GemvSwiGluArgs& a [[buffer(5)]],
                                 uint2 tg [[threadgroup_position_in_grid]], uint tid [[thread_index_in_threadgroup]],
                                 ushort sg [[simdgroup_index_in_threadgroup]],
                                 ushort lane [[thread_index_in_simdgroup]]) {
  threadgroup float xn[kFusedNormMaxCols];
  threadgroup float partial[kFusedSimdgroups];
  fused_norm_row(x + ulong(tg.y) * a.x_stride, nw, a.cols, a.eps, xn, partial, tid, sg, lane);
  const uint nb = a.cols / uint(Fmt<W>::kElems);
  for (uint k = 0; k < kFusedRowsPerSimdgroup; ++k) {
    const uint r = (tg.x * kFusedSimdgroups + sg) * kFusedRowsPerSimdgroup + k;
    if (r >= a.rows) break;  // uniform across the simdgroup
    const float g = fused_row_dot<W>(wg, r, a.row_bytes_gate, nb, xn, lane);
    const float u = fused_row_dot<W>(wu, r, a.row_bytes_up, nb, xn, lane);
    if (lane == 0) out[ulong(tg.y) * a.out_stride + r] = gate_act(g, a.gelu) * u;
  }
}

}  // namespace metallic
