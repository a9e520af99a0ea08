// AVX2 attention row kernels for grouped query heads (see x86_attn.h).
//
// dot: per head two 8-lane FMA chains (even and odd 8-element chunks), summed and reduced
// horizontally at the end. Up to four heads per pass share each converted row chunk; one head
// alone (decode: a job per head) takes four rows per pass instead, sharing each query chunk, so
// either way eight independent chains hide the FMA latency and a row's dot is the same.
// pv: per element one FMA p[h] * row + acc, the positions in order, the accumulators of a slice
// of up to 64 elements of up to four heads held in registers over a block of positions (one head:
// 64 elements, eight chains). Rows are read in whole 16-byte chunks of a row of n % 16 == 0
// elements. softmax: vectors of eight scores, the tail through the same code under a mask.
#include "cpu/arch/x86_attn.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define METALLIC_HAVE_AVX2 1
#include <algorithm>
#include <cmath>

#include "cpu/arch/x86_exp.h"
#include "cpu/arch/x86_simd.h"
#endif

namespace metallic::cpu {

#if METALLIC_HAVE_AVX2

namespace {

using namespace x86::simd;

template <int H>
METALLIC_SIMD_INLINE void dot_heads(int64_t n, const uint16_t* r, const float* q, int64_t q_stride, float* out,
                                    int64_t out_stride) {
  __m256 a0[H], a1[H];
  for (int h = 0; h < H; ++h) a0[h] = a1[h] = _mm256_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __m256 w0 = f16x8(r + i), w1 = f16x8(r + i + 8);
    for (int h = 0; h < H; ++h) {
      a0[h] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(q + h * q_stride + i), a0[h]);
      a1[h] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(q + h * q_stride + i + 8), a1[h]);
    }
  }
  for (int h = 0; h < H; ++h) out[h * out_stride] = hsum(_mm256_add_ps(a0[h], a1[h]));
}

// One head, kRows rows: dot_heads<1>'s steps for each row.
constexpr int kRows = 4;
METALLIC_SIMD_INLINE void dot_rows(int64_t n, const char* rows, int64_t row_stride, const float* q, float* out) {
  __m256 a0[kRows], a1[kRows];
  for (int r = 0; r < kRows; ++r) a0[r] = a1[r] = _mm256_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __m256 q0 = _mm256_loadu_ps(q + i), q1 = _mm256_loadu_ps(q + i + 8);
#pragma GCC unroll 4
    for (int r = 0; r < kRows; ++r) {
      const auto* w = reinterpret_cast<const uint16_t*>(rows + r * row_stride) + i;
      a0[r] = _mm256_fmadd_ps(f16x8(w), q0, a0[r]);
      a1[r] = _mm256_fmadd_ps(f16x8(w + 8), q1, a1[r]);
    }
  }
  for (int r = 0; r < kRows; ++r) out[r] = hsum(_mm256_add_ps(a0[r], a1[r]));
}

void dot_f16_heads(int64_t n, int64_t n_pos, const void* rows, int64_t row_stride, const float* q, int64_t q_stride,
                   int nh, float* out, int64_t out_stride) {
  const auto* base = static_cast<const char*>(rows);
  int64_t j = 0;
  if (nh == 1)
    for (; j + kRows <= n_pos; j += kRows) dot_rows(n, base + j * row_stride, row_stride, q, out + j);
  for (; j < n_pos; ++j) {
    const auto* r = reinterpret_cast<const uint16_t*>(base + j * row_stride);
    head_groups<false>(nh, [&](auto H, int h) {
      dot_heads<H>(n, r, q + h * q_stride, q_stride, out + h * out_stride + j, out_stride);
    });
  }
}

// Per slice of 8 * kVec output elements of H heads: the H * kVec accumulators stay in registers
// over a block of kPosBlock positions, whose rows (kPosBlock x n f16, 32 KiB for n = 256) stay in
// L1/L2 while each slice is taken; one pass over the cache however long the context. Every
// element still adds its positions in order, so neither the blocking nor the slice width changes
// the result.
constexpr int64_t kPosBlock = 64;

template <int H, int kVec>
METALLIC_SIMD_INLINE void pv_slices(int64_t i0, int64_t i1, int64_t n_pos, const float* p, int64_t p_stride,
                                    const char* v, int64_t v_stride, float* acc, int64_t acc_stride) {
  for (int64_t j0 = 0; j0 < n_pos; j0 += kPosBlock)
    for (int64_t i = i0; i + 8 * kVec <= i1; i += 8 * kVec) {
      __m256 a[H][kVec];
      for (int h = 0; h < H; ++h)
        for (int k = 0; k < kVec; ++k) a[h][k] = _mm256_loadu_ps(acc + h * acc_stride + i + 8 * k);
      const int64_t j1 = j0 + kPosBlock < n_pos ? j0 + kPosBlock : n_pos;
      for (int64_t j = j0; j < j1; ++j) {
        const auto* r = reinterpret_cast<const uint16_t*>(v + j * v_stride) + i;
        __m256 x[kVec];
#pragma GCC unroll 8
        for (int k = 0; k < kVec; ++k) x[k] = f16x8(r + 8 * k);
        for (int h = 0; h < H; ++h) {
          const __m256 c = _mm256_broadcast_ss(p + h * p_stride + j);
#pragma GCC unroll 8
          for (int k = 0; k < kVec; ++k) a[h][k] = _mm256_fmadd_ps(c, x[k], a[h][k]);
        }
      }
      for (int h = 0; h < H; ++h)
        for (int k = 0; k < kVec; ++k) _mm256_storeu_ps(acc + h * acc_stride + i + 8 * k, a[h][k]);
    }
}

template <int H>
METALLIC_SIMD_INLINE void pv_heads(int64_t n, int64_t n_pos, const float* p, int64_t p_stride, const char* v,
                                   int64_t v_stride, float* acc, int64_t acc_stride) {
  constexpr int kWide = H == 1 ? 8 : H == 2 ? 4 : 2;  // vectors per head in a wide slice
  const int64_t wide = n / (8 * kWide) * (8 * kWide);
  pv_slices<H, kWide>(0, wide, n_pos, p, p_stride, v, v_stride, acc, acc_stride);
  if constexpr (kWide > 4) {  // one head: then 32-element slices (a slice of the split decode)
    const int64_t mid = n / 32 * 32;
    pv_slices<H, 4>(wide, mid, n_pos, p, p_stride, v, v_stride, acc, acc_stride);
    pv_slices<H, 2>(mid, n, n_pos, p, p_stride, v, v_stride, acc, acc_stride);  // n % 16 == 0
  } else if constexpr (kWide > 2) {
    pv_slices<H, 2>(wide, n, n_pos, p, p_stride, v, v_stride, acc, acc_stride);
  }
}

void pv_f16_heads(int64_t n, int64_t n_pos, const float* p, int64_t p_stride, int nh, const void* v, int64_t v_stride,
                  float* acc, int64_t acc_stride) {
  const auto* vb = static_cast<const char*>(v);
  head_groups<false>(nh, [&](auto H, int h) {
    pv_heads<H>(n, n_pos, p + h * p_stride, p_stride, vb, v_stride, acc + h * acc_stride, acc_stride);
  });
}

// Lanes [0, k) of eight set (k <= 8).
METALLIC_SIMD_INLINE __m256i lanes_below(int64_t k) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(k)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

void softmax(float* s, int64_t n, float scale, float softcap) {
  const int64_t full = n / 8 * 8;
  const __m256i tail = lanes_below(n - full);
  if (softcap > 0.f) {
    for (int64_t i = 0; i < n; ++i) s[i] = softcap * std::tanh(s[i] * scale / softcap);
  } else {
    const __m256 k = _mm256_set1_ps(scale);
    for (int64_t i = 0; i < full; i += 8) _mm256_storeu_ps(s + i, _mm256_mul_ps(_mm256_loadu_ps(s + i), k));
    for (int64_t i = full; i < n; ++i) s[i] *= scale;
  }
  // The maximum (a NaN score is passed over here, as std::max does, and poisons the sum below).
  __m256 mv = _mm256_set1_ps(-INFINITY);
  for (int64_t i = 0; i < full; i += 8) mv = _mm256_max_ps(_mm256_loadu_ps(s + i), mv);
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, mv);
  float mx = lanes[0];
  for (int l = 1; l < 8; ++l) mx = std::max(mx, lanes[l]);
  for (int64_t i = full; i < n; ++i) mx = std::max(mx, s[i]);
  const __m256 m = _mm256_set1_ps(mx);
  __m256 sum = _mm256_setzero_ps();
  for (int64_t i = 0; i < full; i += 8) {
    const __m256 e = x86::exp8(_mm256_sub_ps(_mm256_loadu_ps(s + i), m));
    _mm256_storeu_ps(s + i, e);
    sum = _mm256_add_ps(sum, e);
  }
  if (full < n) {  // the tail's lanes only: the others add 0
    const __m256 e =
        _mm256_and_ps(x86::exp8(_mm256_sub_ps(_mm256_maskload_ps(s + full, tail), m)), _mm256_castsi256_ps(tail));
    _mm256_maskstore_ps(s + full, tail, e);
    sum = _mm256_add_ps(sum, e);
  }
  const __m256 inv = _mm256_set1_ps(1.f / hsum(sum));
  for (int64_t i = 0; i < full; i += 8) _mm256_storeu_ps(s + i, _mm256_mul_ps(_mm256_loadu_ps(s + i), inv));
  if (full < n) _mm256_maskstore_ps(s + full, tail, _mm256_mul_ps(_mm256_maskload_ps(s + full, tail), inv));
}

int64_t f32_to_f16(const float* x, int64_t n, uint16_t* d) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
  return i;
}

}  // namespace

F16HeadsFns f16_heads_fns() { return {dot_f16_heads, pv_f16_heads}; }
SoftmaxFn softmax_fn() { return softmax; }
F32ToF16Fn f32_to_f16_fn() { return f32_to_f16; }

#else

F16HeadsFns f16_heads_fns() { return {}; }
SoftmaxFn softmax_fn() { return nullptr; }
F32ToF16Fn f32_to_f16_fn() { return nullptr; }

#endif

}  // namespace metallic::cpu
