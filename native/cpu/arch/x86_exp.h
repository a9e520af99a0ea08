// exp of eight floats (AVX2 + FMA), shared by the gated activations (x86_act.cpp) and the
// attention softmax (x86_attn.cpp). Include only from files compiled with AVX2 + FMA.
//
// Cephes' single-precision expf: range reduction by ln 2 in two parts, a degree-6 polynomial,
// 2^n through the exponent bits; about 1 ulp. The argument is clamped to [-87.3, 88.3] so 2^n
// stays normal (below, the result is ~1e-38 instead of a denormal or 0; above, ~2e38 instead of
// inf). A NaN argument gives NaN: the clamps take the NaN operand (maxps / minps return their
// second operand when either is NaN).
#pragma once

#include <immintrin.h>

namespace metallic::cpu::x86 {

__attribute__((always_inline)) inline __m256 exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_set1_ps(88.3f), _mm256_max_ps(_mm256_set1_ps(-87.3f), x));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  const __m256 y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

}  // namespace metallic::cpu::x86
