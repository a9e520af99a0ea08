// KV-cache rows as rope_kv writes them and the attention kernels read them. A row holds head_dim
// values of one (KV head, position) as C: float, half, or whole GGML blocks of 32 (BlockQ8_0,
// BlockQ4_0; native/core/quant_blocks.h), rows packed back to back (row_stride ==
// kv_row_bytes<C>(head_dim)). Quantized rows are read in registers (value = d * code, exact in
// float: an fp16 scale times a code of <= 8 bits), never through a dequantized copy.
//
// Alignment: a block is 34 (Q8_0) or 18 (Q4_0) bytes, so a block's fp16 scale is only 2-byte
// aligned; it is read as a ushort through the block struct (alignment 2), as the gemv kernels read
// weight blocks, and written as two bytes. The plan binds every cache at an even byte offset.
#pragma once

#include "quant.h"

namespace metallic {

// Bytes of one cache row of hd values (hd a multiple of Fmt<C>::kElems, checked by the plan).
template <typename C>
inline ulong kv_row_bytes(uint hd) {
  return ulong(hd / Fmt<C>::kElems) * Fmt<C>::kBytes;
}

// Value d (0 <= d < hd) of the row at `row`.
template <typename C>
inline float kv_load(device const uchar* row, uint d) {
  return Fmt<C>::get(row + ulong(d / Fmt<C>::kElems) * Fmt<C>::kBytes, d % Fmt<C>::kElems);
}

// Finite by the bits (not isfinite: the Metal device compiles with fast math, which may assume
// every float finite and fold isfinite to true).
inline bool kv_finite(float x) { return (as_type<uint>(x) & 0x7f800000u) != 0x7f800000u; }

enum : uint { kKvFp16NaN = 0x7e00u };  // the scale of a block with a non-finite value

inline void kv_store_bits(device uchar* block, uint bits) {  // little-endian fp16 bits, byte by byte
  block[0] = uchar(bits & 0xffu);
  block[1] = uchar(bits >> 8);
}

inline void kv_store_scale(device uchar* block, float d) {
  kv_store_bits(block, uint(as_type<ushort>(half(d))));  // round to nearest even, as f32_to_fp16
}

// 1 / d in float, 0 where d is 0 or 1 / d overflows (such a d is 0 in fp16 anyway): GGML's
// reference. precise::divide: correctly rounded under fast math too.
inline float kv_inverse(float d) {
  const float id = d != 0.f ? precise::divide(1.f, d) : 0.f;
  return kv_finite(id) ? id : 0.f;
}

// Quantizes one block of 32 values held one per lane (lane i: value i) by a whole simdgroup and
// writes it at `block`, with GGML's reference rounding (native/cpu/quantize.cpp). Called in
// simdgroup-uniform control flow by all 32 lanes. A block with a non-finite value gets scale NaN
// and codes whose value is NaN * 0 (as the CPU device: a diverged row reads as NaN, never as an
// undefined float -> int conversion).
template <typename B>
struct KvQuant;

template <>
struct KvQuant<BlockQ8_0> {  // d = amax / 127, q = round-half-away(x * (1 / d))
  static void store(float x, device uchar* block, ushort lane) {
    const bool finite = simd_min(kv_finite(x) ? 1u : 0u) != 0u;  // uniform
    if (!finite) {
      if (lane == 0) kv_store_bits(block, kKvFp16NaN);
      block[2 + lane] = 0;
      return;
    }
    const float d = precise::divide(simd_max(abs(x)), 127.f);
    if (lane == 0) kv_store_scale(block, d);
    block[2 + lane] = uchar(int(round(x * kv_inverse(d))) & 0xff);  // int8 two's complement
  }
};

template <>
struct KvQuant<BlockQ4_0> {  // m = first value of largest |x|, d = m / -8, code = min(15, trunc(x / d + 8.5))
  static void store(float x, device uchar* block, ushort lane) {
    const bool finite = simd_min(kv_finite(x) ? 1u : 0u) != 0u;  // uniform
    if (!finite) {
      if (lane == 0) kv_store_bits(block, kKvFp16NaN);
      if (lane < 16) block[2 + lane] = 0x88;  // code 8: value (8 - 8) * NaN
      return;
    }
    const float ax = abs(x);
    const float amax = simd_max(ax);
    const uint first = simd_min(ax == amax ? uint(lane) : 32u);  // uniform; a lane always matches
    const float m = simd_broadcast(x, ushort(first));
    const float d = precise::divide(m, -8.f);
    // The product is rounded before the + 8.5, as in the reference (the emulator never contracts
    // it into an FMA; Apple's compiler under fast math may, moving a code by one at a tie).
    const float y = x * kv_inverse(d);
    const uint code = uint(min(15.f, trunc(y + 8.5f)));  // y >= -8: y + 8.5 > 0
    const uint hi = simd_shuffle_xor(code, ushort(16));  // lane i < 16 pairs with lane i + 16
    if (lane == 0) kv_store_scale(block, d);
    if (lane < 16) block[2 + lane] = uchar(code | (hi << 4));
  }
};

}  // namespace metallic
