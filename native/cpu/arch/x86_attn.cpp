// AVX2 attention row kernels for grouped query heads (see x86_attn.h).
//
// dot: per head two 8-lane FMA chains (even and odd 8-element chunks), summed and reduced
// horizontally at the end; up to four heads per pass share each converted row chunk, so eight
// independent chains hide the FMA latency. pv: per element one FMA p[h] * row + acc, the
// positions in order, the accumulators of 16 elements of up to four heads held in registers over
// a block of positions. Rows are read in whole 16-byte chunks of a row of n % 16 == 0 elements.
#include "cpu/arch/x86_attn.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define METALLIC_HAVE_AVX2 1
#include "cpu/arch/x86_simd.h"
#endif

namespace metallic::cpu {

#if METALLIC_HAVE_AVX2

namespace {

using namespace x86::simd;

template <int H>
METALLIC_SIMD_INLINE void dot_heads(int64_t n, const uint16_t* r, const float* q, int64_t q_stride, float* out) {
  __m256 a0[H], a1[H];
  for (int h = 0; h < H; ++h) a0[h] = a1[h] = _mm256_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __m256 w0 = f16x8(r + i), w1 = f16x8(r + i + 8);
    for (int h = 0; h < H; ++h) {
      a0[h] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(q + h * q_stride + i), a0[h]);
      a1[h] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(q + h * q_stride + i + 8), a1[h]);
    }
  }
  for (int h = 0; h < H; ++h) out[h] = hsum(_mm256_add_ps(a0[h], a1[h]));
}

void dot_f16_heads(int64_t n, const void* row, const float* q, int64_t q_stride, int nh, float* out) {
  const auto* r = static_cast<const uint16_t*>(row);
  head_groups<false>(nh, [&](auto H, int h) { dot_heads<H>(n, r, q + h * q_stride, q_stride, out + h); });
}

// Per 16 output elements of H heads: the 2H accumulators stay in registers over a block of
// kPosBlock positions, whose rows (kPosBlock x n f16, 32 KiB for n = 256) stay in L1/L2 while
// each 16-element slice is taken; one pass over the cache however long the context. Every
// element still adds its positions in order, so blocking does not change the result.
constexpr int64_t kPosBlock = 64;

template <int H>
METALLIC_SIMD_INLINE void pv_heads(int64_t n, int64_t n_pos, const float* p, int64_t p_stride, const char* v,
                                   int64_t v_stride, float* acc) {
  for (int64_t j0 = 0; j0 < n_pos; j0 += kPosBlock)
    for (int64_t i = 0; i < n; i += 16) {
      __m256 a0[H], a1[H];
      for (int h = 0; h < H; ++h) {
        a0[h] = _mm256_loadu_ps(acc + h * n + i);
        a1[h] = _mm256_loadu_ps(acc + h * n + i + 8);
      }
      const int64_t j1 = j0 + kPosBlock < n_pos ? j0 + kPosBlock : n_pos;
      for (int64_t j = j0; j < j1; ++j) {
        const auto* r = reinterpret_cast<const uint16_t*>(v + j * v_stride);
        const __m256 v0 = f16x8(r + i), v1 = f16x8(r + i + 8);
        for (int h = 0; h < H; ++h) {
          const __m256 c = _mm256_broadcast_ss(p + h * p_stride + j);
          a0[h] = _mm256_fmadd_ps(c, v0, a0[h]);
          a1[h] = _mm256_fmadd_ps(c, v1, a1[h]);
        }
      }
      for (int h = 0; h < H; ++h) {
        _mm256_storeu_ps(acc + h * n + i, a0[h]);
        _mm256_storeu_ps(acc + h * n + i + 8, a1[h]);
      }
    }
}

void pv_f16_heads(int64_t n, int64_t n_pos, const float* p, int64_t p_stride, int nh, const void* v, int64_t v_stride,
                  float* acc) {
  const auto* vb = static_cast<const char*>(v);
  head_groups<false>(
      nh, [&](auto H, int h) { pv_heads<H>(n, n_pos, p + h * p_stride, p_stride, vb, v_stride, acc + h * n); });
}

}  // namespace

F16HeadsFns f16_heads_fns() { return {dot_f16_heads, pv_f16_heads}; }

#else

F16HeadsFns f16_heads_fns() { return {}; }

#endif

}  // namespace metallic::cpu
