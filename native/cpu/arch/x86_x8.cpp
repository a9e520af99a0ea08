// AVX2 / AVX-512-VNNI kernels for the 8-row interleaved layout (see cpu/repack.h).
//
// Per block of 8 rows: each 32-byte weight chunk holds 4 weights of each row; broadcasting the
// matching 4 activation bytes to all lanes, one u8*s8 multiply-add gives the 8 rows' partial
// sums in the 8 int32 lanes. After a block: one convert, the rows' scales (8 fp16 → f32 at once)
// times the activation scale, one FMA; the offset term (Q4_1 m, Q4_0 -8d, Q8_0 -128d) is one FMA
// against the activation's s. Up to four tokens share each unpacked weight block (prefill).
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

// kKind: 0 = Q4_0, 1 = Q4_1, 2 = Q8_0. T tokens (1..4) against one group of 8 rows.
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
      ov = _mm256_mul_ps(dv, _mm256_set1_ps(-128.f));
    } else {
      const uint8_t* qs;
      if constexpr (kKind == 1) {
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
    }
    for (int t = 0; t < T; ++t) {
      const int64_t tok = t0 + t;
      const int8_t* aq = a.q + tok * cols + b * kQK;
      // Activation byte groups in the order of w[]: Q8_0 chunk j = elements 4j..4j+3; Q4 w[j] =
      // elements 4j.., w[4 + j] = elements 16 + 4j...
      __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
      if constexpr (kKind == 2) {
        for (int j = 0; j < 8; j += 2) {
          s0 = dpbusd(s0, w[j], bcast4(aq + 4 * j));
          s1 = dpbusd(s1, w[j + 1], bcast4(aq + 4 * j + 4));
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
    case DType::kF32:
    case DType::kF16:
    case DType::kBF16:
    case DType::kQ5_0:
    case DType::kQ5_1:
    case DType::kQ4_K:
    case DType::kQ5_K:
    case DType::kQ6_K: return nullptr;
  }
  return nullptr;
}

#else

DotX8Fn dot_x8_fn(DType) { return nullptr; }

#endif

}  // namespace metallic::cpu
