// Prefill GEMM on simdgroup_matrix tiles: out[t, r] (+)= W[r, :] . x[t, :] (+ bias[r]) for
// t < n_tokens, r < rows; the same contract (buffers, GemvArgs-like fields, epilogue) as gemv.h.
//
// grid = (ceil(rows / kGemmTileRows), ceil(n_tokens / kGemmTileTokens)), kGemmSimdgroups * 32
// threads. Threadgroup (gx, gy) owns the output tile tokens [gy * 32, +32) x rows [gx * 64, +64)
// and walks K in chunks of kGemmTileK = 32 columns:
//   1. stage: the threads dequantize the chunk of the tile's 64 weight rows (Fmt<W>::get, any
//      weight format) into sw[r][k] and copy the 32 tokens' activations into sx[t][k], both float
//      in threadgroup memory (12 KiB); rows >= rows, tokens >= n_tokens and columns >= cols are
//      stored as 0 and never read from device memory;
//   2. barrier; simdgroup s owns rows [16 s, 16 s + 16) of the tile for all 32 tokens: 4 x 2
//      accumulators of 8x8 floats. Per 8-column step it loads 4 x tiles (tokens x k, from sx) and 2
//      W^T tiles (k x rows, sw loaded transposed) and does 8 simdgroup_multiply_accumulate;
//   3. barrier (the next chunk overwrites sx / sw).
// Whole 8x8 tiles past n_tokens (and past rows, per simdgroup) and 8-column steps past cols are
// skipped: the conditions are uniform across the threadgroup (the simdgroup for rows), as the
// simdgroup_matrix calls require. Epilogue: the accumulators go through sw (reused as out[t][r],
// 64 floats per token), then each thread writes its elements with the bias and residual add in
// gemv's order, bounds-checked.
//
// Precision: products and sums in float (float threadgroup memory, float accumulators): a sum of
// cols products per output, like gemv, in a different order.
#pragma once

#include "args.h"
#include "quant.h"

namespace metallic {

enum : uint32_t {
  kGemmThreads = kGemmSimdgroups * 32,
  kGemmTokenTiles = kGemmTileTokens / 8,                  // 8x8 tiles along tokens (per simdgroup)
  kGemmRowTiles = kGemmTileRows / (8 * kGemmSimdgroups),  // 8x8 tiles along rows per simdgroup
  kGemmRowsPerSimdgroup = kGemmRowTiles * 8,
};
static_assert(kGemmTileTokens % 8 == 0 && kGemmTileK % 8 == 0, "gemm: tiles are whole 8x8 matrices");
static_assert(kGemmTileRows % (8 * kGemmSimdgroups) == 0, "gemm: rows split evenly over the simdgroups");
static_assert(kGemmTileTokens <= kGemmTileK, "gemm: the out tile [tokens][rows] must fit in sw [rows][k]");

template <typename W>
[[kernel]] void gemm(device const uchar* w [[buffer(0)]], device const float* x [[buffer(1)]],
                     device const float* bias [[buffer(2)]], device float* out [[buffer(3)]],
                     constant GemmArgs& a [[buffer(4)]], uint2 tg [[threadgroup_position_in_grid]],
                     uint tid [[thread_index_in_threadgroup]], ushort sg [[simdgroup_index_in_threadgroup]]) {
  threadgroup float sx[kGemmTileTokens * kGemmTileK];  // [t][k]
  threadgroup float sw[kGemmTileRows * kGemmTileK];    // [r][k]; in the epilogue out[t][r]
  const uint r0 = tg.x * kGemmTileRows, t0 = tg.y * kGemmTileTokens;
  const uint sg_r = sg * kGemmRowsPerSimdgroup;  // the simdgroup's first row in the tile
  // Tiles holding at least one real token / row (uniform: threadgroup position and args only).
  const uint n_tt = t0 < a.n_tokens ? min(uint(kGemmTokenTiles), (a.n_tokens - t0 + 7) / 8) : 0;
  const uint n_rt = r0 + sg_r < a.rows ? min(uint(kGemmRowTiles), (a.rows - r0 - sg_r + 7) / 8) : 0;

  simdgroup_float8x8 acc[kGemmTokenTiles][kGemmRowTiles];
  for (uint i = 0; i < kGemmTokenTiles; ++i)
    for (uint m = 0; m < kGemmRowTiles; ++m) acc[i][m] = make_filled_simdgroup_matrix<float, 8, 8>(0.f);

  for (uint k0 = 0; k0 < a.cols; k0 += kGemmTileK) {
    for (uint i = tid; i < kGemmTileRows * kGemmTileK; i += kGemmThreads) {
      const uint r = r0 + i / kGemmTileK, k = k0 + i % kGemmTileK;
      float v = 0.f;
      if (r < a.rows && k < a.cols) {
        const uint b = k / uint(Fmt<W>::kElems);
        v = Fmt<W>::get(w + ulong(r) * a.row_bytes + ulong(b) * uint(Fmt<W>::kBytes), k - b * uint(Fmt<W>::kElems));
      }
      sw[i] = v;
    }
    for (uint i = tid; i < kGemmTileTokens * kGemmTileK; i += kGemmThreads) {
      const uint t = t0 + i / kGemmTileK, k = k0 + i % kGemmTileK;
      sx[i] = t < a.n_tokens && k < a.cols ? x[ulong(t) * a.x_stride + k] : 0.f;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    const uint k_end = min(uint(kGemmTileK), a.cols - k0);
    for (uint kk = 0; kk < k_end; kk += 8) {
      simdgroup_float8x8 xa[kGemmTokenTiles];
      simdgroup_float8x8 wb[kGemmRowTiles];
      // Constant trip counts with uniform guards: the register arrays are indexed statically.
      for (uint i = 0; i < kGemmTokenTiles; ++i)
        if (i < n_tt) simdgroup_load(xa[i], sx + i * 8 * kGemmTileK + kk, kGemmTileK);
      for (uint m = 0; m < kGemmRowTiles; ++m)
        if (m < n_rt) simdgroup_load(wb[m], sw + (sg_r + m * 8) * kGemmTileK + kk, kGemmTileK, ulong2(0, 0), true);
      for (uint i = 0; i < kGemmTokenTiles; ++i)
        for (uint m = 0; m < kGemmRowTiles; ++m)
          if (i < n_tt && m < n_rt) simdgroup_multiply_accumulate(acc[i][m], xa[i], wb[m], acc[i][m]);
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
  }

  for (uint i = 0; i < kGemmTokenTiles; ++i)
    for (uint m = 0; m < kGemmRowTiles; ++m)
      if (i < n_tt && m < n_rt) simdgroup_store(acc[i][m], sw + i * 8 * kGemmTileRows + sg_r + m * 8, kGemmTileRows);
  threadgroup_barrier(mem_flags::mem_threadgroup);
  for (uint i = tid; i < kGemmTileTokens * kGemmTileRows; i += kGemmThreads) {
    const uint t = t0 + i / kGemmTileRows, r = r0 + i % kGemmTileRows;
    if (t >= a.n_tokens || r >= a.rows) continue;
    const float v = sw[i] + (a.has_bias != 0 ? bias[r] : 0.f);
    device float* o = out + ulong(t) * a.out_stride + r;
    *o = a.accumulate != 0 ? *o + v : v;
  }
}

}  // namespace metallic
