// AVX2 / AVX-512-VNNI kernels for the 8-row interleaved layout (see cpu/repack.h).
//
// Per block of 8 rows: each 32-byte weight chunk holds 4 weights of each row; broadcasting the
// matching 4 activation bytes to all lanes, one u8*s8 multiply-add gives the 8 rows' partial
// sums in the 8 int32 lanes. After a block: one convert, the rows' scales (8 fp16 → f32 at once)
// times the activation scale, one FMA; the offset term (Q4_1 m, Q4_0 -8d, Q8_0 -128d) is one FMA
// against the activation's s. Up to four tokens share each unpacked weight block (prefill).
// Q8_0 without VNNI stores signed q (repack.h kQ8x8Bias = 0): |q| is the unsigned operand and
// the sign moves onto the broadcast activation bytes, so no pair sum saturates (128 * 127 * 2).
#include <type_traits>

#include "core/quant_blocks.h"
#include "cpu/repack.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define METALLIC_HAVE_AVX2 1
#include "cpu/arch/x86_simd.h"
#endif

namespace metallic::cpu {

#if METALLIC_HAVE_AVX2

namespace {

using namespace x86::simd;

inline __m256i dpbusd(__m256i acc, __m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(acc, u, s);
#else
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
#endif
}

inline __m256i bcast4(const int8_t* p) {
  int32_t v;
  __builtin_memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

inline __m256 f16x8(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }

inline void store8(float* dst, __m256 v, bool accumulate) {
  _mm256_storeu_ps(dst, accumulate ? _mm256_add_ps(_mm256_loadu_ps(dst), v) : v);
}

// kKind: 0 = Q4_0, 1 = Q4_1, 2 = Q8_0, 3 = Q5_0 (Q4_0's nibbles plus the fifth bits: codes
// 0..31, offset -16 d), 4 = Q5_1 (the same codes, Q4_1's min as the offset). T tokens (1..4) against one group of 8
// rows.
template <int kKind, int T>
inline void group_tokens(int64_t cols, const void* group, const ActRows& a, int64_t t0, float* out, int64_t out_stride,
                         bool accumulate) {
  const int64_t nb = cols / kQK;
  __m256 acc[T], off[T];
  for (int t = 0; t < T; ++t) acc[t] = off[t] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    __m256i w[8];
    __m256 dv, ov;  // per-row scale and offset coefficient
    if constexpr (kKind == 2) {
      const auto& blk = static_cast<const BlockQ8_0x8*>(group)[b];
      for (int j = 0; j < 8; ++j) w[j] = load32(blk.qs + 32 * j);
      dv = f16x8(blk.d);
      ov = _mm256_mul_ps(dv, _mm256_set1_ps(-static_cast<float>(kQ8x8Bias)));
    } else {
      const uint8_t* qs;
      if constexpr (kKind == 3) {
        const auto& blk = static_cast<const BlockQ5_0x8*>(group)[b];
        qs = blk.qs;
        dv = f16x8(blk.d);
        ov = _mm256_mul_ps(dv, _mm256_set1_ps(-16.f));
      } else if constexpr (kKind == 4) {
        const auto& blk = static_cast<const BlockQ5_1x8*>(group)[b];
        qs = blk.qs;
        dv = f16x8(blk.d);
        ov = f16x8(blk.m);
      } else if constexpr (kKind == 1) {
        const auto& blk = static_cast<const BlockQ4_1x8*>(group)[b];
        qs = blk.qs;
        dv = f16x8(blk.d);
        ov = f16x8(blk.m);
      } else {
        const auto& blk = static_cast<const BlockQ4_0x8*>(group)[b];
        qs = blk.qs;
        dv = f16x8(blk.d);
        ov = _mm256_mul_ps(dv, _mm256_set1_ps(-8.f));
      }
      const __m256i mask = _mm256_set1_epi8(0x0f);
      for (int j = 0; j < 4; ++j) {
        const __m256i raw = load32(qs + 32 * j);
        w[j] = _mm256_and_si256(raw, mask);                            // elements 4j..4j+3
        w[4 + j] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask);  // elements 16+4j..
      }
      if constexpr (kKind == 3 || kKind == 4) {
        using Blk = std::conditional_t<kKind == 3, BlockQ5_0x8, BlockQ5_1x8>;
        const auto& blk = static_cast<const Blk*>(group)[b];
        for (int c = 0; c < 8; ++c)
          w[c] = _mm256_or_si256(w[c], q5_high_bits(reinterpret_cast<const uint8_t*>(&blk.qh[c])));
      }
    }
    for (int t = 0; t < T; ++t) {
      const int64_t tok = t0 + t;
      const int8_t* aq = a.q + tok * cols + b * kQK;
      // Activation byte groups in the order of w[]: Q8_0 chunk j = elements 4j..4j+3; Q4 w[j] =
      // elements 4j.., w[4 + j] = elements 16 + 4j...
      __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
      if constexpr (kKind == 2 && kQ8x8Bias != 0) {
        for (int j = 0; j < 8; j += 2) {
          s0 = dpbusd(s0, w[j], bcast4(aq + 4 * j));
          s1 = dpbusd(s1, w[j + 1], bcast4(aq + 4 * j + 4));
        }
      } else if constexpr (kKind == 2) {  // signed q: |q| x (sign(q) * a)
        for (int j = 0; j < 8; j += 2) {
          s0 = dpbusd(s0, _mm256_abs_epi8(w[j]), _mm256_sign_epi8(bcast4(aq + 4 * j), w[j]));
          s1 = dpbusd(s1, _mm256_abs_epi8(w[j + 1]), _mm256_sign_epi8(bcast4(aq + 4 * j + 4), w[j + 1]));
        }
      } else {
        for (int j = 0; j < 4; ++j) {
          s0 = dpbusd(s0, w[j], bcast4(aq + 4 * j));
          s1 = dpbusd(s1, w[4 + j], bcast4(aq + 16 + 4 * j));
        }
      }
      const __m256 sums = _mm256_cvtepi32_ps(_mm256_add_epi32(s0, s1));
      const int64_t ab = tok * nb + b;
      acc[t] = _mm256_fmadd_ps(sums, _mm256_mul_ps(dv, _mm256_set1_ps(a.d[ab])), acc[t]);
      off[t] = _mm256_fmadd_ps(ov, _mm256_set1_ps(a.s[ab]), off[t]);
    }
  }
  for (int t = 0; t < T; ++t) store8(out + (t0 + t) * out_stride, _mm256_add_ps(acc[t], off[t]), accumulate);
}

// Q4_K / Q5_K: T tokens (1..2: the sub-block sums, accumulators and scale lanes fill the 16 ymm
// registers) against one group of 8 rows. Per pair of sub-blocks: 8 chunks, each one load and
// two nibble masks for two u8*s8 multiply-adds per token; then per sub-block one convert and one
// FMA with the rows' d * sc (8 lanes) times the activation scale, and the min term
// dmin * m * s_a as one FMA. Per token the same steps whatever T (batch invariance).
inline __m256 u8x8f(const uint8_t* p) {
  int64_t v;
  __builtin_memcpy(&v, p, 8);
  return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(v)));
}

template <typename Blk, int T>
inline void group_k45(int64_t cols, const void* group, const ActRows& a, int64_t t0, float* out, int64_t out_stride,
                      bool accumulate) {
  const int64_t nsb = cols / kQK_K, nb = cols / kQK;
  const __m256i mask = _mm256_set1_epi8(0x0f);
  __m256 acc[T], off[T];
  for (int t = 0; t < T; ++t) acc[t] = off[t] = _mm256_setzero_ps();
  for (int64_t sb = 0; sb < nsb; ++sb) {
    const auto& blk = static_cast<const Blk*>(group)[sb];
    const __m256 dv = f16x8(blk.d), mv = f16x8(blk.dmin);
    for (int p = 0; p < 4; ++p) {
      __m256i s0[T], s1[T];
      for (int t = 0; t < T; ++t) s0[t] = s1[t] = _mm256_setzero_si256();
      for (int c = 0; c < 8; ++c) {
        const __m256i raw = load32(blk.qs + 256 * p + 32 * c);
        __m256i lo = _mm256_and_si256(raw, mask);
        __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask);
        if constexpr (std::is_same_v<Blk, BlockQ5_Kx8>) {  // the fifth bits: codes 0..31
          lo = _mm256_or_si256(lo, q5_high_bits(reinterpret_cast<const uint8_t*>(&blk.qh[p][0][c])));
          hi = _mm256_or_si256(hi, q5_high_bits(reinterpret_cast<const uint8_t*>(&blk.qh[p][1][c])));
        }
        for (int t = 0; t < T; ++t) {
          const int8_t* aq = a.q + (t0 + t) * cols + sb * kQK_K + 64 * p + 4 * c;
          s0[t] = dpbusd(s0[t], lo, bcast4(aq));
          s1[t] = dpbusd(s1[t], hi, bcast4(aq + 32));
        }
      }
      const __m256 sc0 = _mm256_mul_ps(dv, u8x8f(blk.sc[2 * p])), sc1 = _mm256_mul_ps(dv, u8x8f(blk.sc[2 * p + 1]));
      const __m256 m0 = _mm256_mul_ps(mv, u8x8f(blk.m[2 * p])), m1 = _mm256_mul_ps(mv, u8x8f(blk.m[2 * p + 1]));
      for (int t = 0; t < T; ++t) {
        const int64_t ab = (t0 + t) * nb + sb * 8 + 2 * p;
        acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s0[t]), _mm256_mul_ps(sc0, _mm256_set1_ps(a.d[ab])), acc[t]);
        acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s1[t]), _mm256_mul_ps(sc1, _mm256_set1_ps(a.d[ab + 1])), acc[t]);
        off[t] = _mm256_fmadd_ps(m0, _mm256_set1_ps(a.s[ab]), off[t]);
        off[t] = _mm256_fmadd_ps(m1, _mm256_set1_ps(a.s[ab + 1]), off[t]);
      }
    }
  }
  for (int t = 0; t < T; ++t) store8(out + (t0 + t) * out_stride, _mm256_sub_ps(acc[t], off[t]), accumulate);
}

template <typename Blk>
void dot_x8_k45(int64_t cols, const void* group, const ActRows& a, float* out, int64_t out_stride, bool accumulate) {
  int64_t t = 0;
  for (; t + 2 <= a.nt; t += 2) group_k45<Blk, 2>(cols, group, a, t, out, out_stride, accumulate);
  for (; t < a.nt; ++t) group_k45<Blk, 1>(cols, group, a, t, out, out_stride, accumulate);
}

// Q6_K: T tokens (1..2) against one group of 8 rows. Per half h and chunk c: three loads give
// 4 elements of 8 rows for each of the half's four 32-element groups (codes 0..63, unpacked as
// the row-major kernel does); per group one u8*s8 multiply-add per token into the accumulator
// of its 16-element half (chunks 0..3, 4..7). The -32 offset is subtracted in integers with the
// token's 16-element activation sums; then one convert and one FMA per 16 elements with the
// rows' d * sc (8 lanes) times the activation scale. Same steps whatever T (batch invariance).
inline int32_t sum16(const int8_t* q) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q));
  const __m128i p = _mm_madd_epi16(_mm_maddubs_epi16(_mm_set1_epi8(1), v), _mm_set1_epi16(1));
  __m128i s = _mm_add_epi32(p, _mm_shuffle_epi32(p, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}

template <int T>
inline void group_q6k(int64_t cols, const void* group, const ActRows& a, int64_t t0, float* out, int64_t out_stride,
                      bool accumulate) {
  const int64_t nsb = cols / kQK_K, nb = cols / kQK;
  const __m256i m4 = _mm256_set1_epi8(0x0f), m30 = _mm256_set1_epi8(0x30);
  __m256 acc[T];
  for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
  for (int64_t sb = 0; sb < nsb; ++sb) {
    const auto& blk = static_cast<const BlockQ6_Kx8*>(group)[sb];
    const __m256 dv = f16x8(blk.d);
    for (int h = 0; h < 2; ++h)
      for (int k = 0; k < 4; ++k) {  // the 32-element group 4h + k
        __m256i s_lo[T], s_hi[T];
        for (int t = 0; t < T; ++t) s_lo[t] = s_hi[t] = _mm256_setzero_si256();
        for (int c = 0; c < 8; ++c) {
          const __m256i ql = load32(blk.ql[2 * h + k % 2] + 32 * c), qh = load32(blk.qh[h] + 32 * c);
          const __m256i lo = k < 2 ? _mm256_and_si256(ql, m4) : _mm256_and_si256(_mm256_srli_epi16(ql, 4), m4);
          const __m256i hb = k == 0   ? _mm256_slli_epi16(qh, 4)
                             : k == 1 ? _mm256_slli_epi16(qh, 2)
                             : k == 2 ? qh
                                      : _mm256_srli_epi16(qh, 2);
          const __m256i u = _mm256_or_si256(lo, _mm256_and_si256(hb, m30));
          for (int t = 0; t < T; ++t) {
            const __m256i av = bcast4(a.q + (t0 + t) * cols + sb * kQK_K + 128 * h + 32 * k + 4 * c);
            if (c < 4) {
              s_lo[t] = dpbusd(s_lo[t], u, av);
            } else {
              s_hi[t] = dpbusd(s_hi[t], u, av);
            }
          }
        }
        const int g = 8 * h + 2 * k;  // 16-element groups g (chunks 0..3) and g + 1 (4..7)
        const __m256 sc0 = _mm256_mul_ps(
            dv, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk.sc[g])))));
        const __m256 sc1 = _mm256_mul_ps(
            dv,
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk.sc[g + 1])))));
        for (int t = 0; t < T; ++t) {
          const int8_t* aq = a.q + (t0 + t) * cols + sb * kQK_K + 128 * h + 32 * k;
          const __m256i lo = _mm256_sub_epi32(s_lo[t], _mm256_set1_epi32(32 * sum16(aq)));
          const __m256i hi = _mm256_sub_epi32(s_hi[t], _mm256_set1_epi32(32 * sum16(aq + 16)));
          const __m256 da = _mm256_set1_ps(a.d[(t0 + t) * nb + sb * 8 + 4 * h + k]);
          acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lo), _mm256_mul_ps(sc0, da), acc[t]);
          acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(hi), _mm256_mul_ps(sc1, da), acc[t]);
        }
      }
  }
  for (int t = 0; t < T; ++t) store8(out + (t0 + t) * out_stride, acc[t], accumulate);
}

void dot_x8_q6k(int64_t cols, const void* group, const ActRows& a, float* out, int64_t out_stride, bool accumulate) {
  int64_t t = 0;
  for (; t + 2 <= a.nt; t += 2) group_q6k<2>(cols, group, a, t, out, out_stride, accumulate);
  for (; t < a.nt; ++t) group_q6k<1>(cols, group, a, t, out, out_stride, accumulate);
}

template <int kKind>
void dot_x8(int64_t cols, const void* group, const ActRows& a, float* out, int64_t out_stride, bool accumulate) {
  int64_t t = 0;
  for (; t + 4 <= a.nt; t += 4) group_tokens<kKind, 4>(cols, group, a, t, out, out_stride, accumulate);
  for (; t + 2 <= a.nt; t += 2) group_tokens<kKind, 2>(cols, group, a, t, out, out_stride, accumulate);
  for (; t < a.nt; ++t) group_tokens<kKind, 1>(cols, group, a, t, out, out_stride, accumulate);
}

}  // namespace

DotX8Fn dot_x8_fn(DType t) {
  switch (t) {
    case DType::kQ4_0: return dot_x8<0>;
    case DType::kQ4_1: return dot_x8<1>;
    case DType::kQ8_0: return dot_x8<2>;
    case DType::kQ5_0: return dot_x8<3>;
    case DType::kQ5_1: return dot_x8<4>;
    case DType::kQ4_K: return dot_x8_k45<BlockQ4_Kx8>;
    case DType::kQ5_K: return dot_x8_k45<BlockQ5_Kx8>;
    case DType::kQ6_K: return dot_x8_q6k;
    case DType::kF32:
    case DType::kF16:
    case DType::kBF16: return nullptr;
  }
  return nullptr;
}

#else

DotX8Fn dot_x8_fn(DType) { return nullptr; }

#endif

}  // namespace metallic::cpu
