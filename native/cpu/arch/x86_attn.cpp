// AVX2 attention row kernels for grouped query heads (see x86_attn.h).
//
// dot: per (row, head) one 8-lane FMA chain over the 8-element chunks in order, reduced by
// hsum's tree. A pass takes R rows x H heads (up to four heads; the R * H chains and H query
// chunks within the 16 registers): each converted row chunk serves the H heads and each query
// chunk the R rows, and four dots share one transposed reduction (hsum4). Neither R nor H
// changes a dot's steps.
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

// R rows x H heads: out[h * out_stride + r] = dot(row r, q + h * q_stride). Per dot one 8-lane
// FMA chain over the 8-element chunks in order, then hsum's tree (hsum4 for four dots at once),
// whatever R and H; each converted row chunk serves the H heads, each query chunk the R rows.
template <int H, int R>
METALLIC_SIMD_INLINE void dot_block(int64_t n, const char* rows, int64_t row_stride, const float* q, int64_t q_stride,
                                    float* out, int64_t out_stride) {
  constexpr int kDots = R * H, kPadded = (kDots + 3) / 4 * 4;
  __m256 a[kPadded];  // dot k: row k / H, head k % H
  for (int k = 0; k < kPadded; ++k) a[k] = _mm256_setzero_ps();
  for (int64_t i = 0; i < n; i += 8) {
    __m256 qv[H];
#pragma GCC unroll 4
    for (int h = 0; h < H; ++h) qv[h] = _mm256_loadu_ps(q + h * q_stride + i);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m256 w = f16x8(reinterpret_cast<const uint16_t*>(rows + r * row_stride) + i);
#pragma GCC unroll 4
      for (int h = 0; h < H; ++h) a[r * H + h] = _mm256_fmadd_ps(w, qv[h], a[r * H + h]);
    }
  }
#pragma GCC unroll 4
  for (int k = 0; k < kDots; k += 4) {
    alignas(16) float s[4];
    _mm_store_ps(s, hsum4(a[k], a[k + 1], a[k + 2], a[k + 3]));
    for (int j = 0; j < 4 && k + j < kDots; ++j) out[(k + j) % H * out_stride + (k + j) / H] = s[j];
  }
}

// Rows per block for H heads: the R * H accumulators and H query chunks fit the 16 registers.
template <int H>
constexpr int kRowsFor = H == 1   ? 8
                         : H == 2 ? 4
                         : H == 3 ? 4
                                  : 2;
constexpr int64_t kRowBlock = 8;  // positions per pass: every head group takes them while in L1

void dot_f16_heads(int64_t n, int64_t n_pos, const void* rows, int64_t row_stride, const float* q, int64_t q_stride,
                   int nh, float* out, int64_t out_stride) {
  const auto* base = static_cast<const char*>(rows);
  for (int64_t j0 = 0; j0 < n_pos; j0 += kRowBlock) {
    const int64_t j1 = j0 + kRowBlock < n_pos ? j0 + kRowBlock : n_pos;
    head_groups<true>(nh, [&](auto H, int h) {
      constexpr int R = kRowsFor<H>;
      static_assert(kRowBlock % R == 0, "a full block is whole R-row passes");
      int64_t j = j0;
      if (j1 - j0 == kRowBlock)
        for (; j < j1; j += R)
          dot_block<H, R>(n, base + j * row_stride, row_stride, q + h * q_stride, q_stride, out + h * out_stride + j,
                          out_stride);
      for (; j < j1; ++j)
        dot_block<H, 1>(n, base + j * row_stride, row_stride, q + h * q_stride, q_stride, out + h * out_stride + j,
                        out_stride);
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
