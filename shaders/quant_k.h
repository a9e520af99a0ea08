// The GGUF formats Q5_0, Q5_1 and the K-quants Q4_K, Q5_K, Q6_K as the kernels read them: Fmt<W>
// specializations with the interface of quant.h (kElems values in kBytes bytes, `get` one
// dequantized value, `dot` a whole block against float activations, float accumulation). Bit
// layouts: native/core/quant_blocks.h; the CPU scalar references are native/cpu/quants_k.cpp.
//
// `get` is bit-exact with the CPU dequantizer: each value is scale * code (+ offset) where the
// product of the fp16 scale, the small integer (sub-)block scale and the code is exact in float
// (at most 11 + 7 + 6 = 24 significant bits), so the only rounding is the offset addition,
// whatever the evaluation order (a fused multiply-add rounds the same way).
//
// `dot` is written for one GPU lane walking a whole block (the gemv's lane-strided loop): the
// K-quant scales are unpacked once per super-block with word operations, codes are read two at a
// time from 16-bit loads (every field used that way sits at an even offset, and the block structs
// hold uint16_t fields, so a valid block pointer is 2-byte aligned), and per (sub-)block the
// products code * x are summed before the one multiplication by the scale. Formats with a minimum
// (Q5_1, Q4_K, Q5_K) apply it through the sum of the activations; Q5_0 and Q6_K fold their -16 /
// -32 offset into the integer code.
//
// DEBT: with one 256-element super-block per lane, a K-quant row of cols < 32 * 256 leaves lanes
// idle (cols = 2048: 8 busy lanes of 32); splitting a super-block across lanes (as llama.cpp's
// Metal kernels do) is owed once the Metal device can measure it.
#pragma once

#include "quant.h"

namespace metallic {

// ----------------------------------------------------------------------------- Q5_0 / Q5_1

// The 32 high bits of a Q5 block (bit i = bit 4 of value i) from qh[4] at an even offset.
inline uint q5_high_bits(device const uchar* qh) {
  device const ushort* h = (device const ushort*)qh;
  return uint(h[0]) | uint(h[1]) << 16;
}

// 5-bit code (0..31) of value i of a Q5 block.
inline uint q5_code(device const uchar* qs, device const uchar* qh, uint i) {
  const uint nib = i < 16 ? (qs[i] & 0xF) : (qs[i - 16] >> 4);
  return nib | ((qh[i / 8] >> (i % 8)) & 1) << 4;
}

template <>
struct Fmt<BlockQ5_0> {
  enum { kElems = 32, kBytes = 22 };
  static float get(device const uchar* b, uint i) {
    device const BlockQ5_0* q = (device const BlockQ5_0*)b;
    return float(as_type<half>(q->d)) * float(int(q5_code(q->qs, q->qh, i)) - 16);
  }
  template <typename X>
  static float dot(device const uchar* b, X x) {
    device const BlockQ5_0* q = (device const BlockQ5_0*)b;
    const uint qh = q5_high_bits(q->qh);
    float s = 0.f;
    for (uint l = 0; l < 16; ++l) {  // byte l holds values l (low nibble) and l + 16 (high)
      const int c0 = int((q->qs[l] & 0xF) | ((qh >> l) & 1) << 4) - 16;
      const int c1 = int((q->qs[l] >> 4) | ((qh >> (l + 16)) & 1) << 4) - 16;
      s += float(c0) * x[l] + float(c1) * x[l + 16];
    }
    return float(as_type<half>(q->d)) * s;
  }
};

template <>
struct Fmt<BlockQ5_1> {
  enum { kElems = 32, kBytes = 24 };
  static float get(device const uchar* b, uint i) {
    device const BlockQ5_1* q = (device const BlockQ5_1*)b;
    return float(as_type<half>(q->d)) * float(q5_code(q->qs, q->qh, i)) + float(as_type<half>(q->m));
  }
  template <typename X>
  static float dot(device const uchar* b, X x) {
    device const BlockQ5_1* q = (device const BlockQ5_1*)b;
    const uint qh = q5_high_bits(q->qh);
    float s = 0.f, sx = 0.f;
    for (uint l = 0; l < 16; ++l) {
      const uint c0 = (q->qs[l] & 0xF) | ((qh >> l) & 1) << 4;
      const uint c1 = (q->qs[l] >> 4) | ((qh >> (l + 16)) & 1) << 4;
      s += float(c0) * x[l] + float(c1) * x[l + 16];
      sx += x[l] + x[l + 16];
    }
    return float(as_type<half>(q->d)) * s + float(as_type<half>(q->m)) * sx;
  }
};

// ----------------------------------------------------------------------------- Q4_K / Q5_K

// The 6-bit scales and mins of the 8 sub-blocks, unpacked from the 12 packed bytes (layout in
// quant_blocks.h) with word operations: sc[j] is byte j % 4 (little-endian) of sc[j / 4], m[j]
// likewise of m[j / 4].
struct KScales {
  uint sc[2];
  uint m[2];
};

inline KScales unpack_k_scales(device const uchar* p) {
  device const ushort* h = (device const ushort*)p;  // offset 4 of the block: 2-byte aligned
  const uint u0 = uint(h[0]) | uint(h[1]) << 16;     // bytes 0..3
  const uint u1 = uint(h[2]) | uint(h[3]) << 16;     // bytes 4..7
  const uint u2 = uint(h[4]) | uint(h[5]) << 16;     // bytes 8..11
  KScales k;
  k.sc[0] = u0 & 0x3F3F3F3Fu;
  k.m[0] = u1 & 0x3F3F3F3Fu;
  k.sc[1] = (u2 & 0x0F0F0F0Fu) | ((u0 >> 2) & 0x30303030u);  // bits 6..7 of a byte -> bits 4..5
  k.m[1] = ((u2 >> 4) & 0x0F0F0F0Fu) | ((u1 >> 2) & 0x30303030u);
  return k;
}

inline uint k_byte(uint word, uint j) { return (word >> (8 * (j % 4))) & 0xFF; }

// Value v (0..255) of a Q4_K (kHigh = false; qh unused) or Q5_K super-block b: sub-block
// j = v / 32, element l = v % 32.
template <bool kHigh>
inline float k45_get(device const uchar* b, device const uchar* scales, device const uchar* qh, device const uchar* qs,
                     uint v) {
  device const ushort* dd = (device const ushort*)b;  // d, dmin
  const KScales k = unpack_k_scales(scales);
  const uint j = v / 32, l = v % 32;
  uint code = (qs[32 * (j / 2) + l] >> (4 * (j % 2))) & 0xF;
  if (kHigh) code |= ((qh[l] >> j) & 1) << 4;
  const float d = float(as_type<half>(dd[0])) * float(k_byte(k.sc[j / 4], j));
  const float m = float(as_type<half>(dd[1])) * float(k_byte(k.m[j / 4], j));
  return d * float(code) - m;
}

// A whole Q4_K / Q5_K super-block against x[0..255]. Sub-blocks 2p (low nibbles) and 2p + 1
// (high nibbles) share bytes 32p .. 32p + 31 of qs; one 16-bit load gives two elements of each.
// Per sub-block: a = sum code * x, s = sum x; the result is d * sum sc*a - dmin * sum m*s.
// kHigh = false (Q4_K): qh unused.
template <bool kHigh, typename X>
inline float k45_dot(device const uchar* b, device const uchar* scales, device const uchar* qh, device const uchar* qs,
                     X x) {
  device const ushort* dd = (device const ushort*)b;
  const KScales k = unpack_k_scales(scales);
  device const ushort* h16 = (device const ushort*)qh;  // Q5_K: bit j of byte l = bit 4 of (j, l)
  float acc_sc = 0.f, acc_m = 0.f;
  for (uint p = 0; p < 4; ++p) {
    device const ushort* w16 = (device const ushort*)(qs + 32 * p);
    X x0 = x + 64 * p;  // sub-block 2p
    X x1 = x0 + 32;     // sub-block 2p + 1
    float a0 = 0.f, a1 = 0.f, s0 = 0.f, s1 = 0.f;
    for (uint i = 0; i < 16; ++i) {  // elements 2i, 2i + 1 of both sub-blocks (bytes 0, 1 below)
      const uint w = w16[i];
      uint lo = w & 0x0F0Fu, hi = (w >> 4) & 0x0F0Fu;
      if (kHigh) {
        const uint hb = uint(h16[i]) >> (2 * p);
        lo |= (hb & 0x0101u) << 4;
        hi |= (hb & 0x0202u) << 3;
      }
      a0 += float(lo & 0xFF) * x0[2 * i] + float(lo >> 8) * x0[2 * i + 1];
      a1 += float(hi & 0xFF) * x1[2 * i] + float(hi >> 8) * x1[2 * i + 1];
      s0 += x0[2 * i] + x0[2 * i + 1];
      s1 += x1[2 * i] + x1[2 * i + 1];
    }
    const uint j = 2 * p;
    acc_sc += float(k_byte(k.sc[j / 4], j)) * a0 + float(k_byte(k.sc[j / 4], j + 1)) * a1;
    acc_m += float(k_byte(k.m[j / 4], j)) * s0 + float(k_byte(k.m[j / 4], j + 1)) * s1;
  }
  return float(as_type<half>(dd[0])) * acc_sc - float(as_type<half>(dd[1])) * acc_m;
}

template <>
struct Fmt<BlockQ4_K> {
  enum { kElems = 256, kBytes = 144 };
  static float get(device const uchar* b, uint i) {
    device const BlockQ4_K* q = (device const BlockQ4_K*)b;
    return k45_get<false>(b, q->scales, q->qs, q->qs, i);  // qh unused
  }
  template <typename X>
  static float dot(device const uchar* b, X x) {
    device const BlockQ4_K* q = (device const BlockQ4_K*)b;
    return k45_dot<false>(b, q->scales, q->qs, q->qs, x);  // qh unused (kHigh = false)
  }
};

template <>
struct Fmt<BlockQ5_K> {
  enum { kElems = 256, kBytes = 176 };
  static float get(device const uchar* b, uint i) {
    device const BlockQ5_K* q = (device const BlockQ5_K*)b;
    return k45_get<true>(b, q->scales, q->qh, q->qs, i);
  }
  template <typename X>
  static float dot(device const uchar* b, X x) {
    device const BlockQ5_K* q = (device const BlockQ5_K*)b;
    return k45_dot<true>(b, q->scales, q->qh, q->qs, x);
  }
};

// ----------------------------------------------------------------------------- Q6_K

template <>
struct Fmt<BlockQ6_K> {
  enum { kElems = 256, kBytes = 210 };
  static float get(device const uchar* b, uint v) {
    device const BlockQ6_K* q = (device const BlockQ6_K*)b;
    const uint h = v / 128, t = (v % 128) / 32, l = v % 32;
    const uint lo = (q->ql[64 * h + 32 * (t % 2) + l] >> (4 * (t / 2))) & 0xF;
    const uint hi = (q->qh[32 * h + l] >> (2 * t)) & 3;
    return float(as_type<half>(q->d)) * float(q->scales[v / 16]) * float(int(lo | hi << 4) - 32);
  }
  // Half h, sub-block t (values 128h + 32t + l): low bits from ql[64h + 32(t % 2) + l] (nibble
  // t / 2), high bits from qh[32h + l] (bits 2t, 2t + 1). Elements l < 16 and l >= 16 of a
  // sub-block are the groups 8h + 2t + k, k = l / 16, each with its own int8 scale.
  template <typename X>
  static float dot(device const uchar* b, X x) {
    device const BlockQ6_K* q = (device const BlockQ6_K*)b;
    device const ushort* ql = (device const ushort*)q->ql;
    device const ushort* qh = (device const ushort*)q->qh;
    float acc = 0.f;
    for (uint h = 0; h < 2; ++h) {
      for (uint k = 0; k < 2; ++k) {
        float a[4] = {0.f, 0.f, 0.f, 0.f};          // groups 8h + 2t + k, t = 0..3
        for (uint i = 8 * k; i < 8 * k + 8; ++i) {  // elements l = 2i, 2i + 1 (bytes 0, 1 below)
          const uint w0 = ql[32 * h + i], w1 = ql[32 * h + 16 + i], hb = qh[16 * h + i];
          const uint c0 = (w0 & 0x0F0Fu) | (hb & 0x0303u) << 4;
          const uint c1 = (w1 & 0x0F0Fu) | (hb & 0x0C0Cu) << 2;
          const uint c2 = ((w0 >> 4) & 0x0F0Fu) | (hb & 0x3030u);
          const uint c3 = ((w1 >> 4) & 0x0F0Fu) | ((hb >> 2) & 0x3030u);
          X xv = x + 128 * h + 2 * i;
          a[0] += float(int(c0 & 0xFF) - 32) * xv[0] + float(int(c0 >> 8) - 32) * xv[1];
          a[1] += float(int(c1 & 0xFF) - 32) * xv[32] + float(int(c1 >> 8) - 32) * xv[33];
          a[2] += float(int(c2 & 0xFF) - 32) * xv[64] + float(int(c2 >> 8) - 32) * xv[65];
          a[3] += float(int(c3 & 0xFF) - 32) * xv[96] + float(int(c3 >> 8) - 32) * xv[97];
        }
        for (uint t = 0; t < 4; ++t) acc += float(q->scales[8 * h + 2 * t + k]) * a[t];
      }
    }
    return float(as_type<half>(q->d)) * acc;
  }
};

}  // namespace metallic
