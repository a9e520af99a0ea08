// Small AVX2 helpers shared by the x86 kernel files (header-only, inline). Include only from
// files compiled with AVX2 + FMA + F16C (guarded by METALLIC_HAVE_AVX2 there).
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cpu/vnni.h"

// Forced inlining: a call inside a kernel loop would spill every live ymm (all are caller-saved),
// and GCC declines to inline some of these helpers in the larger kernels.
#define METALLIC_SIMD_INLINE inline __attribute__((always_inline))

namespace metallic::cpu::x86::simd {

METALLIC_SIMD_INLINE float hsum(__m256 v) {
  __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
  return _mm_cvtss_f32(lo);
}

// hsum of four vectors at once: lane k of the result is hsum(v_k), bit for bit (the same tree,
// ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)), taken across the four).
METALLIC_SIMD_INLINE __m128 hsum4(__m256 v0, __m256 v1, __m256 v2, __m256 v3) {
  const __m256 t01 = _mm256_add_ps(_mm256_permute2f128_ps(v0, v1, 0x20), _mm256_permute2f128_ps(v0, v1, 0x31));
  const __m256 t23 = _mm256_add_ps(_mm256_permute2f128_ps(v2, v3, 0x20), _mm256_permute2f128_ps(v2, v3, 0x31));
  // [z0a, z0b, z2a, z2b | z1a, z1b, z3a, z3b]: z_a = l0 + l4 + (l2 + l6), z_b = the odd lanes'
  const __m256 z = _mm256_add_ps(_mm256_shuffle_ps(t01, t23, 0x44), _mm256_shuffle_ps(t01, t23, 0xee));
  const __m128 lo = _mm256_castps256_ps128(z), hi = _mm256_extractf128_ps(z, 1);
  const __m128 r = _mm_add_ps(_mm_shuffle_ps(lo, hi, 0x88), _mm_shuffle_ps(lo, hi, 0xdd));  // [h0, h2, h1, h3]
  return _mm_shuffle_ps(r, r, 0xd8);
}

#if METALLIC_VNNI
// vpdpbusd: lane i of acc plus the four products u[4i + k] * s[4i + k] (u unsigned, s signed
// bytes), wrapping in int32, never saturating (see cpu/vnni.h).
METALLIC_SIMD_INLINE __m256i dpbusd(__m256i acc, __m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(acc, u, s);
#elif defined(__AVXVNNI__)
  return _mm256_dpbusd_avx_epi32(acc, u, s);
#else
  // The emulation: the even and the odd bytes widened to int16 (u zero-, s sign-extended); each
  // product fits int16 x int16 -> int32 exactly and vpmaddwd adds two of them (|sum| <= 2 * 255
  // * 128), so lane i gets (u0 s0 + u2 s2) + (u1 s1 + u3 s3): the four products' sum, exactly.
  const __m256i low = _mm256_set1_epi16(0x00ff);
  const __m256i even = _mm256_madd_epi16(_mm256_and_si256(u, low), _mm256_srai_epi16(_mm256_slli_epi16(s, 8), 8));
  const __m256i odd = _mm256_madd_epi16(_mm256_srli_epi16(u, 8), _mm256_srai_epi16(s, 8));
  return _mm256_add_epi32(acc, _mm256_add_epi32(even, odd));
#endif
}
#endif

// Sums groups of four u8*s8 products into eight int32 lanes.
METALLIC_SIMD_INLINE __m256i dot_u8s8(__m256i u, __m256i s) {
#if METALLIC_VNNI
  return dpbusd(_mm256_setzero_si256(), u, s);
#else
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

// 16 packed bytes -> 32 nibbles (elements 0..15 = low nibbles, 16..31 = high nibbles).
METALLIC_SIMD_INLINE __m256i unpack_nibbles(const uint8_t* qs) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m128i mask = _mm_set1_epi8(0x0f);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), mask), _mm_and_si128(raw, mask));
}

METALLIC_SIMD_INLINE float h2f(uint16_t h) { return _cvtsh_ss(h); }

// Eight f16 values (F16C) as floats.
METALLIC_SIMD_INLINE __m256 f16x8(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

METALLIC_SIMD_INLINE __m256i load32(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

// Bit i of the little-endian uint32 at qh -> 0x10 in byte i (the fifth bit of Q5 code i).
METALLIC_SIMD_INLINE __m256i q5_high_bits(const uint8_t* qh) {
  uint32_t bits;
  std::memcpy(&bits, qh, 4);
#if defined(__AVX512BW__) && defined(__AVX512VL__)
  return _mm256_maskz_mov_epi8(static_cast<__mmask32>(bits), _mm256_set1_epi8(0x10));
#else
  const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,  //
                                          2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
  const __m256i bit = _mm256_set1_epi64x(0x8040201008040201);
  const __m256i v = _mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(bits)), spread), bit);
  return _mm256_and_si256(_mm256_cmpeq_epi8(v, bit), _mm256_set1_epi8(0x10));
#endif
}

// Horizontal sums of eight int32x8 vectors: lane j of the result is the sum of p[j]'s lanes.
METALLIC_SIMD_INLINE __m256i hsum8_epi32(const __m256i p[8]) {
  const __m256i h01 = _mm256_hadd_epi32(p[0], p[1]);
  const __m256i h23 = _mm256_hadd_epi32(p[2], p[3]);
  const __m256i h45 = _mm256_hadd_epi32(p[4], p[5]);
  const __m256i h67 = _mm256_hadd_epi32(p[6], p[7]);
  const __m256i h0123 = _mm256_hadd_epi32(h01, h23);  // [p0 p1 p2 p3 | p0 p1 p2 p3] half sums
  const __m256i h4567 = _mm256_hadd_epi32(h45, h67);
  return _mm256_add_epi32(_mm256_permute2x128_si256(h0123, h4567, 0x20), _mm256_permute2x128_si256(h0123, h4567, 0x31));
}

// Runs group(std::integral_constant<int, H>{}, h0) over heads [0, nh): groups of 4, then (with
// kThree) one group of 3 when exactly 3 are left, then 2 and 1. The attention row kernels keep
// each head's accumulators apart, so a head's sums do not depend on its group.
template <bool kThree, typename Group>
METALLIC_SIMD_INLINE void head_groups(int nh, Group&& group) {
  int h = 0;
  for (; h + 4 <= nh; h += 4) group(std::integral_constant<int, 4>{}, h);
  if constexpr (kThree) {
    if (nh - h == 3) {
      group(std::integral_constant<int, 3>{}, h);
      return;
    }
  }
  for (; h + 2 <= nh; h += 2) group(std::integral_constant<int, 2>{}, h);
  for (; h < nh; ++h) group(std::integral_constant<int, 1>{}, h);
}

}  // namespace metallic::cpu::x86::simd
