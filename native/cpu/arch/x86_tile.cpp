// AVX2 / VNNI (cpu/vnni.h) tile kernels (see cpu/tile.h): one weight row against eight tokens.
#include "core/quant_blocks.h"
#include "cpu/tile.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define METALLIC_HAVE_AVX2 1
#include "cpu/arch/x86_simd.h"
#endif

namespace metallic::cpu {

#if METALLIC_HAVE_AVX2

namespace {

using namespace x86::simd;

// Block loop shared by the 32-wide formats. `decode(b, u, sign_src)` gives the block's unsigned
// byte operand; `kSigned` types (Q8_0) move the weight sign onto the activations. `scale(b)` is
// the weight scale, `offset(b)` the coefficient of s (d_a * sum(q_a)) in the block's term.
// Each token takes exactly the float steps of the single-token kernel (x86.cpp dot1: one 8-lane
// accumulator, hsum at the end, the offset chain as fmas in block order), so a token's logits do
// not depend on the batch it ran in (batch invariance); the offsets of the 8 tokens share one
// vector chain (a lane's fma is the scalar fma).
template <bool kSigned, typename Decode, typename Scale, typename Offset>
inline void tile8(int64_t n, const ActTile8& a, float* out, Decode decode, Scale scale, Offset offset) {
  __m256 acc[kTile];
  for (auto& v : acc) v = _mm256_setzero_ps();
  __m256 acc_off = _mm256_setzero_ps();
  for (int64_t b = 0; b < n / kQK; ++b) {
    __m256i w_raw;
    const __m256i u = decode(b, w_raw);
    const float sw = scale(b);
    for (int t = 0; t < kTile; ++t) {
      __m256i av = load32(a.q + t * a.q_stride + b * kQK);
      if constexpr (kSigned) av = _mm256_sign_epi8(av, w_raw);
      const __m256 p = _mm256_cvtepi32_ps(dot_u8s8(u, av));
      acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(sw * a.d8[b * kTile + t]), p, acc[t]);
    }
    if constexpr (!kSigned)
      acc_off = _mm256_fmadd_ps(_mm256_set1_ps(offset(b)), _mm256_loadu_ps(a.s8 + b * kTile), acc_off);
  }
  alignas(32) float off[kTile];
  _mm256_store_ps(off, acc_off);
  for (int t = 0; t < kTile; ++t) out[t] = hsum(acc[t]) + off[t];
}

void dot_q4_0_x8(int64_t n, const void* w, const ActTile8& a, float* out) {
  const auto* blk = static_cast<const BlockQ4_0*>(w);
  tile8<false>(
      n, a, out, [&](int64_t b, __m256i&) { return unpack_nibbles(blk[b].qs); },
      [&](int64_t b) { return h2f(blk[b].d); }, [&](int64_t b) { return -8.f * h2f(blk[b].d); });
}

void dot_q4_1_x8(int64_t n, const void* w, const ActTile8& a, float* out) {
  const auto* blk = static_cast<const BlockQ4_1*>(w);
  tile8<false>(
      n, a, out, [&](int64_t b, __m256i&) { return unpack_nibbles(blk[b].qs); },
      [&](int64_t b) { return h2f(blk[b].d); }, [&](int64_t b) { return h2f(blk[b].m); });
}

void dot_q8_0_x8(int64_t n, const void* w, const ActTile8& a, float* out) {
  const auto* blk = static_cast<const BlockQ8_0*>(w);
  tile8<true>(
      n, a, out,
      [&](int64_t b, __m256i& raw) {
        raw = load32(blk[b].qs);
        return _mm256_sign_epi8(raw, raw);
      },
      [&](int64_t b) { return h2f(blk[b].d); }, [](int64_t) { return 0.f; });
}

}  // namespace

DotQ8x8Fn dot_q8_x8_fn(DType t) {
  switch (t) {
    case DType::kQ4_0: return dot_q4_0_x8;
    case DType::kQ4_1: return dot_q4_1_x8;
    case DType::kQ8_0: return dot_q8_0_x8;
    case DType::kF32:
    case DType::kF16:
    case DType::kBF16:
    case DType::kQ5_0:
    case DType::kQ5_1:
    case DType::kQ4_K:
    case DType::kQ5_K:
    case DType::kQ6_K: return nullptr;  // float types, or 4-token kernels only (DEBT: K tiles)
  }
  return nullptr;
}

#else

DotQ8x8Fn dot_q8_x8_fn(DType) { return nullptr; }

#endif

}  // namespace metallic::cpu
