// RoPE + KV-cache write for token t (at position pos0 + t): rotates the n_head query heads and
// the n_head_kv key heads in place, then stores the rotated k and the unchanged v into the caches
// at row g * kv_capacity + (pos0 + t) % kv_capacity of head g (a sliding-window layer's cache is a
// ring of kv_capacity rows; a global layer's holds every position, so the modulo is the identity). Pairs are (i, i +
// head_dim/2) with `neox`, else (2i, 2i+1); angle = position * inv_freq[i] in float (the CPU device uses double: see
// README). grid = (n_tokens); the threads of a group stride over the (n_head + n_head_kv) * head_dim/2 pairs.
// rope_kv (float / half cache): the thread that rotates pair i of key head g also writes both of its cache elements.
// rope_kv_q (Q8_0 / Q4_0 cache, kv_cache.h): a block needs all 32 of its values, so the rotated k
// is written back to k first (device memory, barrier), then simdgroup s quantizes blocks s, s +
// simdgroups, ... of the token's K and V rows, one value per lane (threads: a multiple of 32).
#pragma once

#include "args.h"
#include "defines.h"
#include "kv_cache.h"

namespace metallic {

struct RopePair {
  uint h;        // head: < n_head a query head, else key head h - n_head
  uint i0, i1;   // the pair's dims in the head
  float y0, y1;  // the rotated values (also stored in q or k)
};

// Rotates pair j of token t in place in q or k.
inline RopePair rope_pair(device float* q, device float* k, device const float* inv_freq, constant RopeKvArgs& a,
                          uint t, uint j) {
  const uint rot = a.rope_dim != 0 ? a.rope_dim : a.head_dim;  // partial rotary: the first dims
  const uint hd2 = rot / 2;
  RopePair r;
  r.h = j / hd2;
  const uint i = j % hd2;
  r.i0 = a.neox != 0 ? i : 2 * i;
  r.i1 = a.neox != 0 ? i + hd2 : 2 * i + 1;
  const float ang = float(a.pos0 + t) * inv_freq[i];
  const float co = precise::cos(ang) * a.mscale, si = precise::sin(ang) * a.mscale;
  device float* p = r.h < a.n_head ? q + ulong(t) * a.q_stride + r.h * a.head_dim
                                   : k + ulong(t) * a.k_stride + (r.h - a.n_head) * a.head_dim;
  const float x0 = p[r.i0], x1 = p[r.i1];
  r.y0 = x0 * co - x1 * si;
  r.y1 = x0 * si + x1 * co;
  p[r.i0] = r.y0;
  p[r.i1] = r.y1;
  return r;
}

inline uint rope_pairs(constant RopeKvArgs& a) {
  return (a.n_head + a.n_head_kv) * ((a.rope_dim != 0 ? a.rope_dim : a.head_dim) / 2);
}

template <typename C>  // cache element: float or half
[[kernel]] void rope_kv(device float* q [[buffer(0)]], device float* k [[buffer(1)]],
                        device const float* v [[buffer(2)]], device C* kc [[buffer(3)]], device C* vc [[buffer(4)]],
                        device const float* inv_freq [[buffer(5)]], constant RopeKvArgs& a [[buffer(6)]],
                        uint t [[threadgroup_position_in_grid]], uint tid [[thread_index_in_threadgroup]],
                        uint ntg [[threads_per_threadgroup]]) {
  const uint pairs = rope_pairs(a);
  for (uint j = tid; j < pairs; j += ntg) {
    const RopePair r = rope_pair(q, k, inv_freq, a, t, j);
    if (r.h >= a.n_head) {
      const uint g = r.h - a.n_head;
      const ulong row = ulong(g) * a.kv_capacity + (a.pos0 + t) % a.kv_capacity;
      device const float* vh = v + ulong(t) * a.v_stride + g * a.head_dim;
      kc[row * a.head_dim + r.i0] = C(r.y0);
      kc[row * a.head_dim + r.i1] = C(r.y1);
      vc[row * a.head_dim + r.i0] = C(vh[r.i0]);
      vc[row * a.head_dim + r.i1] = C(vh[r.i1]);
    }
  }
  // The dims past rope_dim are not rotated: k and v go to the cache as they are.
  const uint rot = a.rope_dim != 0 ? a.rope_dim : a.head_dim;
  const uint rest = a.head_dim - rot;
  for (uint j = tid; j < a.n_head_kv * rest; j += ntg) {
    const uint g = j / rest, d = rot + j % rest;
    const ulong row = ulong(g) * a.kv_capacity + (a.pos0 + t) % a.kv_capacity;
    kc[row * a.head_dim + d] = C(k[ulong(t) * a.k_stride + g * a.head_dim + d]);
    vc[row * a.head_dim + d] = C(v[ulong(t) * a.v_stride + g * a.head_dim + d]);
  }
}

template <typename B>  // cache block: BlockQ8_0 or BlockQ4_0 (head_dim a multiple of 32)
[[kernel]] void rope_kv_q(device float* q [[buffer(0)]], device float* k [[buffer(1)]],
                          device const float* v [[buffer(2)]], device uchar* kc [[buffer(3)]],
                          device uchar* vc [[buffer(4)]], device const float* inv_freq [[buffer(5)]],
                          constant RopeKvArgs& a [[buffer(6)]], uint t [[threadgroup_position_in_grid]],
                          uint tid [[thread_index_in_threadgroup]], uint ntg [[threads_per_threadgroup]],
                          ushort sg [[simdgroup_index_in_threadgroup]], ushort lane [[thread_index_in_simdgroup]]) {
  const uint pairs = rope_pairs(a);
  for (uint j = tid; j < pairs; j += ntg) rope_pair(q, k, inv_freq, a, t, j);
  threadgroup_barrier(mem_flags::mem_device);  // token t's rotated k rows are complete in k
  const uint nb = a.head_dim / 32;             // blocks per row
  const uint kv_blocks = a.n_head_kv * nb;
  const ulong row_b = kv_row_bytes<B>(a.head_dim);
  const uint slot = (a.pos0 + t) % a.kv_capacity;
  for (uint b = sg; b < 2 * kv_blocks; b += ntg / 32) {  // uniform across the simdgroup
    const bool is_v = b >= kv_blocks;
    const uint kb = is_v ? b - kv_blocks : b;
    const uint g = kb / nb, blk = kb % nb;
    device const float* src = is_v ? v + ulong(t) * a.v_stride : k + ulong(t) * a.k_stride;
    device uchar* dst = (is_v ? vc : kc) + (ulong(g) * a.kv_capacity + slot) * row_b + blk * Fmt<B>::kBytes;
    KvQuant<B>::store(src[g * a.head_dim + blk * 32 + lane], dst, lane);
  }
}

}  // namespace metallic
