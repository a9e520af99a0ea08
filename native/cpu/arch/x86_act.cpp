// AVX2 + FMA gated activations (see x86_act.h).
//
// GELU-tanh: 0.5 x (1 + tanh(y)) = x * sigmoid(2 y) = x / (1 + exp(-2 y)), y = sqrt(2/pi) (x +
// 0.044715 x^3), HF's gelu_pytorch_tanh rewritten without tanh; SiLU: x / (1 + exp(-x)). exp is
// x86_exp.h's exp8 (Cephes' expf, about 1 ulp), whose argument is clamped to [-87.3, 88.3]:
// beyond, 1 + exp rounds to 1 (the result is x) or the quotient is below 1e-37 of |x| (the
// activation is 0 to float precision), as with the libm formula.
#include "cpu/arch/x86_act.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define METALLIC_HAVE_AVX2 1
#include "cpu/arch/x86_exp.h"
#endif

namespace metallic::cpu {

#if METALLIC_HAVE_AVX2

namespace {

using x86::exp8;

template <bool kGelu>
__attribute__((always_inline)) inline __m256 act8(__m256 x) {
  __m256 z;  // the sigmoid's argument, negated
  if constexpr (kGelu) {
    constexpr float kSqrt2OverPi = 0.7978845608028654f;
    const __m256 x2 = _mm256_mul_ps(x, x);
    const __m256 y = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(kSqrt2OverPi), x),
                                   _mm256_fmadd_ps(_mm256_set1_ps(0.044715f), x2, _mm256_set1_ps(1.f)));
    z = _mm256_mul_ps(y, _mm256_set1_ps(-2.f));
  } else {
    z = _mm256_sub_ps(_mm256_setzero_ps(), x);
  }
  return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.f), exp8(z)));
}

template <bool kGelu>
void gate(int64_t n, float* g, const float* u) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(g + i, _mm256_mul_ps(act8<kGelu>(_mm256_loadu_ps(g + i)), _mm256_loadu_ps(u + i)));
  if (i < n) {  // the tail through the same vector code (no over-read: copied to a full vector)
    float gt[8] = {}, ut[8] = {};
    for (int64_t j = i; j < n; ++j) {
      gt[j - i] = g[j];
      ut[j - i] = u[j];
    }
    _mm256_storeu_ps(gt, _mm256_mul_ps(act8<kGelu>(_mm256_loadu_ps(gt)), _mm256_loadu_ps(ut)));
    for (int64_t j = i; j < n; ++j) g[j] = gt[j - i];
  }
}

}  // namespace

GateFn gate_fn(bool gelu) { return gelu ? gate<true> : gate<false>; }

#else

GateFn gate_fn(bool) { return nullptr; }

#endif

}  // namespace metallic::cpu
