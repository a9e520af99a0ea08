// AVX2 attention row kernels for a Q8_0 / Q4_0 KV cache and grouped query heads (x86_attn.h).
//
// dot: the query heads are q8 blocks (quantized once per head); per block of 32 the cache row's
// codes are loaded (Q8_0: |w| and its signs; Q4_0: nibbles) once for up to four heads, each head
// then one u8*s8 multiply-add and one FMA of the block scale product into its 8-lane accumulator,
// reduced horizontally at the end: x86::dot_q8_0_q8 / dot_q4_0_q8's float steps (x86.cpp dot1).
// pv: per 16 output elements of up to four heads (one head: 64), the accumulators stay in
// registers over a block of positions; each position's codes widen to floats once for all heads,
// then per head acc = fma(p * d, code, acc): x86::axpy_q8_0 / axpy_q4_0's steps, positions in order.
// Every load reads bytes of one validated block (no over-read).
#include <cmath>

#include "core/quant_blocks.h"
#include "cpu/arch/x86_attn.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define METALLIC_HAVE_AVX2 1
#include "cpu/arch/x86_simd.h"
#endif

namespace metallic::cpu {

#if METALLIC_HAVE_AVX2

namespace {

using namespace x86::simd;

// Q8_0: the codes' magnitudes as the unsigned operand, their signs moved onto the activations.
struct Q8Rows {
  using Block = BlockQ8_0;
  static constexpr bool kSigned = true;
  METALLIC_SIMD_INLINE static __m256i codes(const Block& b, __m256i& raw) {
    raw = load32(b.qs);
    return _mm256_sign_epi8(raw, raw);
  }
  // Elements 16 * half .. 16 * half + 15 as int8.
  METALLIC_SIMD_INLINE static __m128i half_codes(const Block& b, int half) {
    return _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.qs + 16 * half));
  }
};

// Q4_0: nibbles 0..15 as the unsigned operand; the - 8 offset through the activation sums.
struct Q4Rows {
  using Block = BlockQ4_0;
  static constexpr bool kSigned = false;
  METALLIC_SIMD_INLINE static __m256i codes(const Block& b, __m256i&) { return unpack_nibbles(b.qs); }
  METALLIC_SIMD_INLINE static __m128i half_codes(const Block& b, int half) {
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.qs));
    const __m128i nib = half == 0 ? raw : _mm_srli_epi16(raw, 4);
    return _mm_sub_epi8(_mm_and_si128(nib, _mm_set1_epi8(0x0f)), _mm_set1_epi8(8));
  }
};

template <typename R, int H>
METALLIC_SIMD_INLINE void dot_heads(int64_t n, const typename R::Block* blk, const QHeads& q, float* out,
                                    int64_t out_stride) {
  __m256 acc[H];
  float off[H];
  for (int h = 0; h < H; ++h) {
    acc[h] = _mm256_setzero_ps();
    off[h] = 0.f;
  }
  for (int64_t b = 0; b < n / kQK; ++b) {
    __m256i raw;
    const __m256i u = R::codes(blk[b], raw);
    const float dw = h2f(blk[b].d);
    for (int h = 0; h < H; ++h) {
      __m256i av = load32(q.q + h * n + b * kQK);
      if constexpr (R::kSigned) av = _mm256_sign_epi8(av, raw);
      const float da = q.d[h * q.d_stride + b];
      acc[h] = _mm256_fmadd_ps(_mm256_set1_ps(dw * da), _mm256_cvtepi32_ps(dot_u8s8(u, av)), acc[h]);
      if constexpr (!R::kSigned) off[h] = std::fma(-8.f * dw, q.s[h * q.d_stride + b], off[h]);
    }
  }
  for (int h = 0; h < H; ++h) out[h * out_stride] = hsum(acc[h]) + off[h];
}

// One head against four rows (decode: the rows share each query block load); each row's steps
// are dot_heads<R, 1>'s.
template <typename R>
METALLIC_SIMD_INLINE void dot_rows4(int64_t n, const char* base, int64_t row_stride, const QHeads& q, float* out) {
  const typename R::Block* blk[4];
  __m256 acc[4];
  float off[4];
  for (int r = 0; r < 4; ++r) {
    blk[r] = reinterpret_cast<const typename R::Block*>(base + r * row_stride);
    acc[r] = _mm256_setzero_ps();
    off[r] = 0.f;
  }
  for (int64_t b = 0; b < n / kQK; ++b) {
    const __m256i av = load32(q.q + b * kQK);
    const float da = q.d[b];
    for (int r = 0; r < 4; ++r) {
      __m256i raw;
      const __m256i u = R::codes(blk[r][b], raw);
      const float dw = h2f(blk[r][b].d);
      __m256i a = av;
      if constexpr (R::kSigned) a = _mm256_sign_epi8(av, raw);
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(dw * da), _mm256_cvtepi32_ps(dot_u8s8(u, a)), acc[r]);
      if constexpr (!R::kSigned) off[r] = std::fma(-8.f * dw, q.s[b], off[r]);
    }
  }
  for (int r = 0; r < 4; ++r) out[r] = hsum(acc[r]) + off[r];
}

template <typename R>
void dot_rows(int64_t n, int64_t n_pos, const void* rows, int64_t row_stride, QHeads q, int nh, float* out,
              int64_t out_stride) {
  const auto* base = static_cast<const char*>(rows);
  int64_t j = 0;
  if (nh == 1)  // decode: four rows per pass
    for (; j + 4 <= n_pos; j += 4) dot_rows4<R>(n, base + j * row_stride, row_stride, q, out + j);
  for (; j < n_pos; ++j) {
    const auto* blk = reinterpret_cast<const typename R::Block*>(base + j * row_stride);
    auto heads = [&](int h) { return QHeads{q.q + h * n, q.d + h * q.d_stride, q.s + h * q.d_stride, q.d_stride}; };
    // groups of 3 (SmolLM2) in one pass
    head_groups<true>(nh,
                      [&](auto H, int h) { dot_heads<R, H>(n, blk, heads(h), out + h * out_stride + j, out_stride); });
  }
}

constexpr int64_t kPosBlock = 64;  // rows per pass over a 16-element slice (as x86_attn.cpp)

// Elements [i0, n) in slices of 16.
template <typename R, int H>
METALLIC_SIMD_INLINE void pv_heads(int64_t i0, int64_t n, int64_t n_pos, const float* p, int64_t p_stride,
                                   const char* v, int64_t v_stride, float* acc, int64_t acc_stride) {
  for (int64_t j0 = 0; j0 < n_pos; j0 += kPosBlock)
    for (int64_t i = i0; i < n; i += 16) {
      const int64_t b = i / kQK;
      const int half = static_cast<int>(i % kQK) / 16;
      __m256 a0[H], a1[H];
      for (int h = 0; h < H; ++h) {
        a0[h] = _mm256_loadu_ps(acc + h * acc_stride + i);
        a1[h] = _mm256_loadu_ps(acc + h * acc_stride + i + 8);
      }
      const int64_t j1 = j0 + kPosBlock < n_pos ? j0 + kPosBlock : n_pos;
      for (int64_t j = j0; j < j1; ++j) {
        const auto& blk = reinterpret_cast<const typename R::Block*>(v + j * v_stride)[b];
        const __m128i c = R::half_codes(blk, half);
        const __m256 v0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(c));
        const __m256 v1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(c, 8)));
        const float d = h2f(blk.d);
        for (int h = 0; h < H; ++h) {
          const __m256 pd = _mm256_set1_ps(p[h * p_stride + j] * d);
          a0[h] = _mm256_fmadd_ps(pd, v0, a0[h]);
          a1[h] = _mm256_fmadd_ps(pd, v1, a1[h]);
        }
      }
      for (int h = 0; h < H; ++h) {
        _mm256_storeu_ps(acc + h * acc_stride + i, a0[h]);
        _mm256_storeu_ps(acc + h * acc_stride + i + 8, a1[h]);
      }
    }
}

// One head (decode: a job per head), elements [0, n / 64 * 64) in slices of two blocks: eight
// accumulators, so the FMA chains of consecutive positions overlap. Per element the same steps
// as pv_heads (acc = fma(p * d, code, acc), positions in order).
template <typename R>
METALLIC_SIMD_INLINE int64_t pv_one_head(int64_t n, int64_t n_pos, const float* p, const char* v, int64_t v_stride,
                                         float* acc) {
  const int64_t wide = n / 64 * 64;
  for (int64_t j0 = 0; j0 < n_pos; j0 += kPosBlock)
    for (int64_t i = 0; i < wide; i += 64) {
      __m256 a[8];
      for (int k = 0; k < 8; ++k) a[k] = _mm256_loadu_ps(acc + i + 8 * k);
      const int64_t j1 = j0 + kPosBlock < n_pos ? j0 + kPosBlock : n_pos;
      for (int64_t j = j0; j < j1; ++j) {
        const auto* blk = reinterpret_cast<const typename R::Block*>(v + j * v_stride) + i / kQK;
#pragma GCC unroll 2
        for (int b = 0; b < 2; ++b) {
          const __m256 pd = _mm256_set1_ps(p[j] * h2f(blk[b].d));
#pragma GCC unroll 2
          for (int half = 0; half < 2; ++half) {
            const __m128i c = R::half_codes(blk[b], half);
            const int k = 4 * b + 2 * half;
            a[k] = _mm256_fmadd_ps(pd, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(c)), a[k]);
            a[k + 1] = _mm256_fmadd_ps(pd, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(c, 8))), a[k + 1]);
          }
        }
      }
      for (int k = 0; k < 8; ++k) _mm256_storeu_ps(acc + i + 8 * k, a[k]);
    }
  return wide;
}

template <typename R>
void pv_rows(int64_t n, int64_t n_pos, const float* p, int64_t p_stride, int nh, const void* v, int64_t v_stride,
             float* acc, int64_t acc_stride) {
  const auto* vb = static_cast<const char*>(v);
  if (nh == 1) {
    const int64_t done = pv_one_head<R>(n, n_pos, p, vb, v_stride, acc);
    pv_heads<R, 1>(done, n, n_pos, p, p_stride, vb, v_stride, acc, acc_stride);
    return;
  }
  head_groups<true>(nh, [&](auto H, int h) {
    pv_heads<R, H>(0, n, n_pos, p + h * p_stride, p_stride, vb, v_stride, acc + h * acc_stride, acc_stride);
  });
}

}  // namespace

QuantHeadsFns quant_heads_fns(DType t) {
  switch (t) {
    case DType::kQ8_0: return {dot_rows<Q8Rows>, pv_rows<Q8Rows>};
    case DType::kQ4_0: return {dot_rows<Q4Rows>, pv_rows<Q4Rows>};
    case DType::kF32:
    case DType::kF16:
    case DType::kBF16:
    case DType::kQ4_1:
    case DType::kQ5_0:
    case DType::kQ5_1:
    case DType::kQ4_K:
    case DType::kQ5_K:
    case DType::kQ6_K: return {};
  }
  return {};
}

#else

QuantHeadsFns quant_heads_fns(DType) { return {}; }

#endif

}  // namespace metallic::cpu
