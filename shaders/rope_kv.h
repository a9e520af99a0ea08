// RoPE + KV-cache write for token t (at position pos0 + t): rotates the n_head query heads and
// the n_head_kv key heads in place, then stores the rotated k and the unchanged v into the caches
// at row g * kv_capacity + (pos0 + t) % kv_capacity of head g (a sliding-window layer's cache is a
// ring of kv_capacity rows; a global layer's holds every position, so the modulo is the identity). Pairs are (i, i +
// head_dim/2) with `neox`, else (2i, 2i+1); angle = position * inv_freq[i] in float (the CPU device uses double: see
// README). grid = (n_tokens); the threads of a group stride over the (n_head + n_head_kv) * head_dim/2 pairs, and the
// thread that rotates pair i of key head g also writes both of its cache elements.
#pragma once

#include "args.h"
#include "defines.h"

namespace metallic {

template <typename C>  // cache element: float or half
[[kernel]] void rope_kv(device float* q [[buffer(0)]], device float* k [[buffer(1)]],
                        device const float* v [[buffer(2)]], device C* kc [[buffer(3)]], device C* vc [[buffer(4)]],
                        device const float* inv_freq [[buffer(5)]], constant RopeKvArgs& a [[buffer(6)]],
                        uint t [[threadgroup_position_in_grid]], uint tid [[thread_index_in_threadgroup]],
                        uint ntg [[threads_per_threadgroup]]) {
  const uint rot = a.rope_dim != 0 ? a.rope_dim : a.head_dim;  // partial rotary: the first dims
  const uint hd2 = rot / 2;
  const uint pairs = (a.n_head + a.n_head_kv) * hd2;
  const float pos = float(a.pos0 + t);
  for (uint j = tid; j < pairs; j += ntg) {
    const uint h = j / hd2, i = j % hd2;
    const uint i0 = a.neox != 0 ? i : 2 * i;
    const uint i1 = a.neox != 0 ? i + hd2 : 2 * i + 1;
    const float ang = pos * inv_freq[i];
    const float co = precise::cos(ang) * a.mscale, si = precise::sin(ang) * a.mscale;
    const bool is_q = h < a.n_head;
    device float* p =
        is_q ? q + ulong(t) * a.q_stride + h * a.head_dim : k + ulong(t) * a.k_stride + (h - a.n_head) * a.head_dim;
    const float x0 = p[i0], x1 = p[i1];
    const float y0 = x0 * co - x1 * si, y1 = x0 * si + x1 * co;
    p[i0] = y0;
    p[i1] = y1;
    if (!is_q) {
      const uint g = h - a.n_head;
      const ulong row = ulong(g) * a.kv_capacity + (a.pos0 + t) % a.kv_capacity;
      device const float* vh = v + ulong(t) * a.v_stride + g * a.head_dim;
      kc[row * a.head_dim + i0] = C(y0);
      kc[row * a.head_dim + i1] = C(y1);
      vc[row * a.head_dim + i0] = C(vh[i0]);
      vc[row * a.head_dim + i1] = C(vh[i1]);
    }
  }
  // The dims past rope_dim are not rotated: k and v go to the cache as they are.
  const uint rest = a.head_dim - rot;
  for (uint j = tid; j < a.n_head_kv * rest; j += ntg) {
    const uint g = j / rest, d = rot + j % rest;
    const ulong row = ulong(g) * a.kv_capacity + (a.pos0 + t) % a.kv_capacity;
    kc[row * a.head_dim + d] = C(k[ulong(t) * a.k_stride + g * a.head_dim + d]);
    vc[row * a.head_dim + d] = C(v[ulong(t) * a.v_stride + g * a.head_dim + d]);
  }
}

}  // namespace metallic
