// Prefill (flash) attention: a block of query tokens per threadgroup, online softmax, GQA, causal
// over the cache. Same semantics as attention_decode (query t of head h, at position pos0 + t,
// attends to cache positions 0 .. pos0 + t of KV head h / (n_head / n_head_kv)), but each K/V row
// is read from device memory once per query tile instead of once per query.
//
// grid = (n_head, ceil(n_tokens / kFlashTileQ)), kFlashThreads = kFlashSimdgroups * 32 threads. Threadgroup (h, b)
// takes queries t0 = b * kFlashTileQ .. t0 + kFlashTileQ - 1 (those < n_tokens) of head h;
// simdgroup s owns kFlashQueriesPerSimdgroup (Q) of them, ts = t0 + s * Q .. ts + Q - 1, and lane l
// holds dims l, l + 32, ... of each one's scaled q and running output (registers).
//
// The threadgroup walks the cache in tiles of kFlashTileKV (KV) rows, from position 0 up to the last
// position its last query sees. Per tile: every thread copies a strided share of the K and V rows
// into threadgroup memory as float (rows past the tile's last visible position are zero; barrier).
// Each simdgroup then forms its Q x KV scores: lane l accumulates the partial dot products of its
// dims for all Q * KV = 32 pairs, and a reduce-scatter across the simdgroup leaves the full score
// of pair (i, j) = (l / KV, l % KV) in lane l. The causal mask sets invisible pairs to -inf; the
// KV lanes of query i reduce its tile max and sum with simd_shuffle_xor (identical in all KV
// lanes), update the running max m / sum l (flash-attention rescaling by exp(m_old - m_new)), and
// publish the weights p and the rescale factor through threadgroup memory (simdgroup barrier) so
// each lane adds sum_j p_ij * V[j][d] to its dims of the output. A simdgroup skips a tile none of
// its queries sees (uniform across the simdgroup); it still takes part in the tile loads.
// Finally out = o / l. Position 0 is visible to every query, so l > 0 and m is finite from the
// first tile on. All accumulation is float; an f16, Q8_0 or Q4_0 cache (kv_cache.h) is converted
// on the copy into threadgroup memory (a quantized value as d * code, in registers).
//
// Threadgroup memory: 2 * KV * kAttnMaxHeadDim floats (16 KiB) + 32 floats per simdgroup + 2 per
// query: about 16.6 KiB, the same for every cache type.
#pragma once

#include "args.h"
#include "defines.h"
#include "kv_cache.h"

namespace metallic {

static_assert(kFlashQueriesPerSimdgroup * kFlashTileKV == 32, "one (query, position) score per lane");
static_assert(kFlashTileKV % 4 == 0 && (kFlashTileKV & (kFlashTileKV - 1)) == 0, "KV tile: power of 2, float4s");

// Sums 32 per-lane values (s[r][c] is value 4r + c) across the simdgroup and returns, in lane k,
// the total of value k (recursive halving: in the round on lane bit b a lane keeps the half of its
// values whose index bit b equals its own lane bit and adds the partner lane's copy of that half).
// 9 shuffles (float4 x 4 + 2 + 1, float2, float) instead of 32 simd_sums. Each total is a fixed
// binary tree over the lanes, so the result does not depend on the lanes' scheduling.
inline float simd_reduce_scatter32(thread float4* s, ushort lane) {
  for (ushort half_n = 4; half_n >= 1; half_n /= 2) {  // lane bits 4, 3, 2: which float4s
    const ushort mask = half_n * 4;
    const bool up = (lane & mask) != 0;
    for (ushort r = 0; r < half_n; ++r) {
      const float4 keep = up ? s[r + half_n] : s[r];
      const float4 give = up ? s[r] : s[r + half_n];
      s[r] = keep + simd_shuffle_xor(give, mask);
    }
  }
  const bool up2 = (lane & 2) != 0;  // lane bit 1: which float2 of s[0]
  const float2 keep2 = up2 ? s[0].zw : s[0].xy;
  const float2 give2 = up2 ? s[0].xy : s[0].zw;
  const float2 t = keep2 + simd_shuffle_xor(give2, ushort(2));
  const bool up1 = (lane & 1) != 0;  // lane bit 0: which float of t
  return (up1 ? t.y : t.x) + simd_shuffle_xor(up1 ? t.x : t.y, ushort(1));
}

template <typename C>  // cache element: float, half, BlockQ8_0 or BlockQ4_0
[[kernel]] void flash_attn(device const float* q [[buffer(0)]], device const uchar* kc [[buffer(1)]],
                           device const uchar* vc [[buffer(2)]], device float* out [[buffer(3)]],
                           constant FlashAttnArgs& a [[buffer(4)]], uint2 tg [[threadgroup_position_in_grid]],
                           ushort sg [[simdgroup_index_in_threadgroup]], ushort lane [[thread_index_in_simdgroup]],
                           uint tid [[thread_index_in_threadgroup]]) {
  threadgroup float tk[kFlashTileKV * kAttnMaxHeadDim];  // K tile, row j at j * kAttnMaxHeadDim
  threadgroup float tv[kFlashTileKV * kAttnMaxHeadDim];  // V tile
  threadgroup float tp[kFlashSimdgroups * 32];           // softmax weights, simdgroup s at s * 32 + lane
  threadgroup float tc[kFlashTileQ];                     // per query: this tile's rescale factor
  threadgroup float tl[kFlashTileQ];                     // per query: final softmax denominator
  constexpr uint Q = kFlashQueriesPerSimdgroup, KV = kFlashTileKV, MD = kAttnMaxHeadDim;
  const uint h = tg.x, t0 = tg.y * kFlashTileQ;
  if (t0 >= a.n_tokens) return;  // grid larger than needed: the whole threadgroup leaves
  const uint hd = a.head_dim;
  const uint g = h / (a.n_head / a.n_head_kv);
  const uint kv_end = a.pos0 + min(t0 + kFlashTileQ, a.n_tokens);     // tile sees positions < kv_end
  const uint ts = t0 + sg * Q;                                        // this simdgroup's first query
  const bool active = ts < a.n_tokens;                                // uniform across the simdgroup
  const uint sg_end = active ? a.pos0 + min(ts + Q, a.n_tokens) : 0;  // simdgroup sees positions < sg_end
  const uint qi = lane / KV, kj = lane % KV;  // the (query, tile row) pair whose score lane holds
  const uint q_pos = a.pos0 + ts + qi;

  float qv[Q][kAttnMaxDimsPerLane];
  float o[Q][kAttnMaxDimsPerLane];
  for (uint i = 0; i < Q; ++i) {
    const bool real = ts + i < a.n_tokens;  // padding queries of the last tile: q = 0, never stored
    device const float* qh = q + ulong(real ? ts + i : 0) * a.q_stride + h * hd;
    for (uint j = 0; j < kAttnMaxDimsPerLane; ++j) {
      const uint d = lane + 32 * j;
      qv[i][j] = real && d < hd ? qh[d] * a.scale : 0.f;
      o[i][j] = 0.f;
    }
  }
  const ulong row_b = kv_row_bytes<C>(hd);
  device const uchar* kh = kc + ulong(g) * a.kv_capacity * row_b;
  device const uchar* vh = vc + ulong(g) * a.kv_capacity * row_b;
  float m = -INFINITY, l = 0.f;  // running max and sum of query qi (equal in its KV lanes)
  // Sliding window: query position t sees t - window + 1 .. t, so tiles before the first query's
  // window are skipped; later queries may still see none of a tile (their -inf rows stay 0 below).
  const uint first = a.pos0 + t0;
  const uint lo = a.window > 0 && first + 1 > a.window ? first + 1 - a.window : 0;
  const uint q_lo = a.window > 0 && q_pos + 1 > a.window ? q_pos + 1 - a.window : 0;

  for (uint kv0 = lo / KV * KV; kv0 < kv_end; kv0 += KV) {
    // Copy positions kv0 .. kv0 + KV - 1 (element e of the tile is value e - j * hd of position
    // kv0 + j, in row (kv0 + j) % kv_capacity: contiguous reads, a sliding-window ring wraps at
    // most once per tile); rows at or past kv_end are zero, never read from the cache. Positions
    // below the window that a ring has overwritten are loaded but masked (-inf) below.
    const uint n_elem = min(KV, kv_end - kv0) * hd;
    threadgroup_barrier(mem_flags::mem_threadgroup);  // the previous tile is consumed
    for (uint e = tid; e < KV * hd; e += kFlashThreads) {
      const uint j = e / hd, at = j * MD + (e - j * hd);
      if (e < n_elem) {
        const ulong src = ulong((kv0 + j) % a.kv_capacity) * row_b;
        tk[at] = kv_load<C>(kh + src, e - j * hd);
        tv[at] = kv_load<C>(vh + src, e - j * hd);
      } else {
        tk[at] = 0.f;
        tv[at] = 0.f;
      }
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (kv0 >= sg_end) continue;  // no query of this simdgroup sees the tile (uniform)

    // Scores. DEBT: the emulator now has simdgroup_matrix (gemm.h uses it); the score block
    // q . K^T and the P . V update below could become simdgroup_matrix<float, 8, 8>
    // multiply-accumulates (8 queries per simdgroup, K/V tiles read as 8x8 blocks) once a GPU can
    // measure whether it pays at these tile sizes. Plain per-lane FMAs until then.
    float4 sc[Q * KV / 4];  // sc[i * KV / 4 + c][x]: partial score of query i, tile row 4c + x
    for (uint r = 0; r < Q * KV / 4; ++r) sc[r] = float4(0.f);
    for (uint j = 0; j < kAttnMaxDimsPerLane; ++j) {  // constant trip count: unrolled, registers
      const uint d = lane + 32 * j;
      if (d >= hd) break;
      for (uint c = 0; c < KV / 4; ++c) {
        const uint r = 4 * c * MD + d;
        const float4 kr = float4(tk[r], tk[r + MD], tk[r + 2 * MD], tk[r + 3 * MD]);
        for (uint i = 0; i < Q; ++i) sc[i * (KV / 4) + c] += qv[i][j] * kr;
      }
    }
    float dot = simd_reduce_scatter32(sc, lane);
    if (a.softcap > 0.f) dot = a.softcap * tanh(dot / a.softcap);
    const uint pos = kv0 + kj;
    const float s = pos <= q_pos && pos >= q_lo && pos < sg_end ? dot : -INFINITY;  // causal + window

    // Online softmax over the KV lanes of query qi. m_new is -inf only while no tile so far held
    // a position query qi sees (a window): corr and p are then 1 and 0, not exp(-inf - -inf).
    float mx = s;
    for (ushort w = 1; w < KV; w *= 2) mx = max(mx, simd_shuffle_xor(mx, w));
    const float m_new = max(m, mx);
    const bool none = m_new == -INFINITY;
    const float corr = none ? 1.f : exp(m - m_new);
    const float p = none ? 0.f : exp(s - m_new);
    float ps = p;
    for (ushort w = 1; w < KV; w *= 2) ps += simd_shuffle_xor(ps, w);
    l = l * corr + ps;
    m = m_new;
    tp[sg * 32 + lane] = p;
    if (kj == 0) tc[sg * Q + qi] = corr;
    simdgroup_barrier(mem_flags::mem_threadgroup);

    // o[i] = o[i] * corr_i + sum_j p_ij * V[j] on this lane's dims.
    for (uint j = 0; j < kAttnMaxDimsPerLane; ++j) {  // constant trip count: unrolled, registers
      const uint d = lane + 32 * j;
      if (d >= hd) break;
      float vr[KV];
      for (uint k = 0; k < KV; ++k) vr[k] = tv[k * MD + d];
      for (uint i = 0; i < Q; ++i) {
        float acc = o[i][j] * tc[sg * Q + i];
        for (uint k = 0; k < KV; ++k) acc += tp[sg * 32 + i * KV + k] * vr[k];
        o[i][j] = acc;
      }
    }
  }

  if (!active) return;  // uniform across the simdgroup; no barrier follows
  if (kj == 0) tl[sg * Q + qi] = l;
  simdgroup_barrier(mem_flags::mem_threadgroup);
  for (uint i = 0; i < Q && ts + i < a.n_tokens; ++i) {
    device float* oh = out + ulong(ts + i) * a.out_stride + h * hd;
    const float sum = tl[sg * Q + i];
    for (uint j = 0; j < kAttnMaxDimsPerLane; ++j) {
      const uint d = lane + 32 * j;
      if (d < hd) oh[d] = o[i][j] / sum;
    }
  }
}

}  // namespace metallic
