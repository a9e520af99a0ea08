// The weight codes of the 8-row interleaved blocks (cpu/repack.h), one 32-byte chunk at a time:
// chunk c holds elements 4c..4c+3 of the 8 rows (row r at bytes 4r..4r+3). Shared by the SIMD
// kernels (x86_x8.cpp) and the AMX tile kernels (x86_amx.cpp), so both multiply exactly the same
// integers. Include only from files compiled with AVX2 + FMA + F16C.
#pragma once

#include <type_traits>

#include "cpu/arch/x86_simd.h"
#include "cpu/repack.h"

namespace metallic::cpu::x86::simd {

// Chunk c's fifth bits, 0x10 in each byte, from a Q5 block's bit planes (repack.h: bit c of byte
// i). A 16-bit shift by at most 4 moves no byte's bit into the other byte's bit 4.
METALLIC_SIMD_INLINE __m256i q5_plane(__m256i planes, int c) {
  const __m256i v = c < 4 ? _mm256_slli_epi16(planes, 4 - c) : _mm256_srli_epi16(planes, c - 4);
  return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
}

// The low or the high nibbles of 32 packed bytes as byte codes 0..15.
METALLIC_SIMD_INLINE __m256i low_nibbles(__m256i raw) { return _mm256_and_si256(raw, _mm256_set1_epi8(0x0f)); }
METALLIC_SIMD_INLINE __m256i high_nibbles(__m256i raw) { return low_nibbles(_mm256_srli_epi16(raw, 4)); }

// The interleaved block of a 32-wide format. kKind: 0 = Q4_0, 1 = Q4_1, 2 = Q8_0, 3 = Q5_0,
// 4 = Q5_1.
template <int kKind>
using X8Block = std::conditional_t<
    kKind == 0, BlockQ4_0x8,
    std::conditional_t<
        kKind == 1, BlockQ4_1x8,
        std::conditional_t<kKind == 2, BlockQ8_0x8, std::conditional_t<kKind == 3, BlockQ5_0x8, BlockQ5_1x8>>>>;

// Block b of a group of a 32-wide format. kKind: 0 = Q4_0, 1 = Q4_1, 2 = Q8_0, 3 = Q5_0, 4 = Q5_1.
// dv: the rows' scales; ov: the coefficient of the activation's s in the block's term (Q4_0 -8d,
// Q5_0 -16d, Q4_1 / Q5_1 m, Q8_0 -kQ8x8Bias d).
template <int kKind>
METALLIC_SIMD_INLINE void x8_block_scales(const void* group, int64_t b, __m256& dv, __m256& ov) {
  const auto& blk = static_cast<const X8Block<kKind>*>(group)[b];
  dv = f16x8(blk.d);
  if constexpr (kKind == 1 || kKind == 4) {
    ov = f16x8(blk.m);
  } else {
    constexpr float kOffset = kKind == 2 ? -static_cast<float>(kQ8x8Bias) : kKind == 3 ? -16.f : -8.f;
    ov = _mm256_mul_ps(dv, _mm256_set1_ps(kOffset));
  }
}

// The same block's codes: w[c], chunk c's codes, unsigned (Q4: 0..15, Q5: 0..31, Q8_0: q +
// kQ8x8Bias), except Q8_0 when kQ8x8Bias == 0 (the stored signed q); and its scales (above).
template <int kKind>
METALLIC_SIMD_INLINE void x8_block_codes(const void* group, int64_t b, __m256i w[8], __m256& dv, __m256& ov) {
  x8_block_scales<kKind>(group, b, dv, ov);
  const auto& blk = static_cast<const X8Block<kKind>*>(group)[b];
  if constexpr (kKind == 2) {
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) w[j] = load32(blk.qs + 32 * j);
  } else {
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      const __m256i raw = load32(blk.qs + 32 * j);
      w[j] = low_nibbles(raw);
      w[4 + j] = high_nibbles(raw);
    }
    if constexpr (kKind >= 3) {
      const __m256i planes = load32(blk.qh);
#pragma GCC unroll 8
      for (int c = 0; c < 8; ++c) w[c] = _mm256_or_si256(w[c], q5_plane(planes, c));
    }
  }
}

// Q4_K / Q5_K: chunk c of the pair of sub-blocks p, packed: its low nibbles are sub-block 2p's
// codes, its high nibbles sub-block 2p + 1's.
template <typename Blk>
METALLIC_SIMD_INLINE __m256i k45_pair_chunk(const Blk& blk, int p, int c) {
  return load32(blk.qs + 256 * p + 32 * c);
}

// The same chunk as unsigned codes of both sub-blocks (0..15; Q5_K 0..31 with the fifth bits of
// `planes_lo` / `planes_hi`, the pair's bit planes, ignored for Q4_K).
template <typename Blk>
METALLIC_SIMD_INLINE void k45_chunk_codes(const Blk& blk, int p, int c, __m256i planes_lo, __m256i planes_hi,
                                          __m256i& lo, __m256i& hi) {
  const __m256i raw = k45_pair_chunk(blk, p, c);
  lo = low_nibbles(raw);
  hi = high_nibbles(raw);
  if constexpr (std::is_same_v<Blk, BlockQ5_Kx8>) {
    lo = _mm256_or_si256(lo, q5_plane(planes_lo, c));
    hi = _mm256_or_si256(hi, q5_plane(planes_hi, c));
  }
}

// Eight unsigned bytes (a sub-block's scales or mins of the 8 rows) as floats.
METALLIC_SIMD_INLINE __m256 u8x8f(const uint8_t* p) {
  int64_t v;
  __builtin_memcpy(&v, p, 8);
  return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(v)));
}

// Q6_K: chunk c of the 32-element group 4h + k of a super-block as signed codes q - 32 (-32..31),
// unpacked as the row-major kernel does (ql nibble k / 2, qh bits 2k and 2k + 1).
METALLIC_SIMD_INLINE __m256i q6_chunk_codes(const BlockQ6_Kx8& blk, int h, int k, int c) {
  const __m256i m4 = _mm256_set1_epi8(0x0f), m30 = _mm256_set1_epi8(0x30), c32 = _mm256_set1_epi8(32);
  const __m256i ql = load32(blk.ql[2 * h + k % 2] + 32 * c), qh = load32(blk.qh[h] + 32 * c);
  const __m256i lo = k < 2 ? _mm256_and_si256(ql, m4) : _mm256_and_si256(_mm256_srli_epi16(ql, 4), m4);
  const __m256i hb = k == 0   ? _mm256_slli_epi16(qh, 4)
                     : k == 1 ? _mm256_slli_epi16(qh, 2)
                     : k == 2 ? qh
                              : _mm256_srli_epi16(qh, 2);
  return _mm256_sub_epi8(_mm256_or_si256(lo, _mm256_and_si256(hb, m30)), c32);
}

// Q6_K: the rows' d * scale of 16-element group g (8 lanes).
METALLIC_SIMD_INLINE __m256 q6_group_scale(const BlockQ6_Kx8& blk, __m256 dv, int g) {
  return _mm256_mul_ps(
      dv, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk.sc[g])))));
}

}  // namespace metallic::cpu::x86::simd
