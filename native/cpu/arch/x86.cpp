// AVX2 / VNNI (cpu/vnni.h) versions of the row dots and the activation quantizer (see cpu/quants.h).
//
// Quantized dots: nibbles (0..15) or |w| are unsigned bytes, activations signed bytes, so one
// u8*s8 multiply-add (vpdpbusd with VNNI, else vpmaddubsw + vpmaddwd) yields eight int32
// partial sums per 32-element block; the block scale product is applied in float with one FMA.
// Every unaligned load reads exactly the bytes of one validated block (no over-read).
#include <cmath>

#include "core/quant_blocks.h"
#include "cpu/quants.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define METALLIC_HAVE_AVX2 1
#include "cpu/arch/x86_simd.h"
#endif

namespace metallic::cpu::x86 {

#if METALLIC_HAVE_AVX2

bool available() { return true; }

using namespace simd;

void quantize_act_q8(const float* x, int64_t n, int8_t* q, float* d, float* s) {
  const __m256 sign_mask = _mm256_set1_ps(-0.0f);
  for (int64_t b = 0; b < n / kQK; ++b) {
    const float* xb = x + b * kQK;
    __m256 v0 = _mm256_loadu_ps(xb), v1 = _mm256_loadu_ps(xb + 8);
    __m256 v2 = _mm256_loadu_ps(xb + 16), v3 = _mm256_loadu_ps(xb + 24);
    __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign_mask, v0), _mm256_andnot_ps(sign_mask, v1)),
                             _mm256_max_ps(_mm256_andnot_ps(sign_mask, v2), _mm256_andnot_ps(sign_mask, v3)));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const __m256 unord =
        _mm256_or_ps(_mm256_or_ps(_mm256_cmp_ps(v0, v0, _CMP_UNORD_Q), _mm256_cmp_ps(v1, v1, _CMP_UNORD_Q)),
                     _mm256_or_ps(_mm256_cmp_ps(v2, v2, _CMP_UNORD_Q), _mm256_cmp_ps(v3, v3, _CMP_UNORD_Q)));
    const float amax = _mm256_movemask_ps(unord) ? __builtin_nanf("") : _mm_cvtss_f32(m4);  // NaN wins
    if (!(amax >= kActMinAmax && amax <= 3.40282347e38f)) {  // zero, tiny or non-finite: rare
      quantize_act_block_ref(xb, q + b * kQK, d + b, s + b);
      continue;
    }
    const float inv = 127.f / amax;
    const __m256 vi = _mm256_set1_ps(inv);
    constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    __m256i i0 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v0, vi), kRound));
    __m256i i1 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v1, vi), kRound));
    __m256i i2 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v2, vi), kRound));
    __m256i i3 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v3, vi), kRound));
    const __m256i isum = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(isum), _mm256_extracti128_si256(isum, 1));
    s4 = _mm_hadd_epi32(s4, s4);
    s4 = _mm_hadd_epi32(s4, s4);
    // Pack 32 int32 -> 32 int8 (values already in [-127, 127]); packs interleave lanes, so fix
    // the order with one permute.
    const __m256i p01 = _mm256_packs_epi32(i0, i1);
    const __m256i p23 = _mm256_packs_epi32(i2, i3);
    __m256i p = _mm256_packs_epi16(p01, p23);
    p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + b * kQK), p);
    const float scale = amax / 127.f;
    d[b] = scale;
    s[b] = scale * static_cast<float>(_mm_cvtsi128_si32(s4));
  }
}

// One activation against one row. Batch invariance: a token's result is bit-identical whether
// it runs alone (here), in a 4-token pass (dot_x4) or an 8-token tile (x86_tile.cpp), so a
// reused prefix, a chunked prompt and a speculative verify pass give the logits of one-at-a-time
// decoding. All three take the same float steps per token: one 8-lane accumulator, per block
// acc = fma(d_w * d_a, float(lane products), acc) in block order, then hsum(acc) + off with
// off = fma(offset, s_a, off) in block order (integer products are exact in any order).
template <bool kSigned, typename Decode, typename Scale, typename Offset>
inline float dot1(int64_t n, const ActQ8& a, Decode decode, Scale scale, Offset offset) {
  __m256 acc = _mm256_setzero_ps();
  float off = 0.f;
  for (int64_t b = 0; b < n / kQK; ++b) {
    __m256i raw;
    const __m256i u = decode(b, raw);
    __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q + b * kQK));
    if constexpr (kSigned) av = _mm256_sign_epi8(av, raw);
    acc = _mm256_fmadd_ps(_mm256_set1_ps(scale(b) * a.d[b]), _mm256_cvtepi32_ps(dot_u8s8(u, av)), acc);
    if constexpr (!kSigned) off = std::fma(offset(b), a.s[b], off);
  }
  return hsum(acc) + off;
}

float dot_q8_0_q8(int64_t n, const void* w, ActQ8 a) {
  const auto* blk = static_cast<const BlockQ8_0*>(w);
  return dot1<true>(
      n, a,
      [&](int64_t b, __m256i& raw) {
        raw = load32(blk[b].qs);
        return _mm256_sign_epi8(raw, raw);
      },
      [&](int64_t b) { return h2f(blk[b].d); }, [](int64_t) { return 0.f; });
}

float dot_q4_0_q8(int64_t n, const void* w, ActQ8 a) {
  const auto* blk = static_cast<const BlockQ4_0*>(w);
  return dot1<false>(
      n, a, [&](int64_t b, __m256i&) { return unpack_nibbles(blk[b].qs); }, [&](int64_t b) { return h2f(blk[b].d); },
      [&](int64_t b) { return -8.f * h2f(blk[b].d); });
}

float dot_q4_1_q8(int64_t n, const void* w, ActQ8 a) {
  const auto* blk = static_cast<const BlockQ4_1*>(w);
  return dot1<false>(
      n, a, [&](int64_t b, __m256i&) { return unpack_nibbles(blk[b].qs); }, [&](int64_t b) { return h2f(blk[b].d); },
      [&](int64_t b) { return h2f(blk[b].m); });
}

// Four activations against one row: the weight block is loaded and unpacked once. Each token's
// float steps are dot1's (batch invariance).
template <typename Unpack, typename Offset>
inline void dot_x4(int64_t n, const ActQ8* a, float* out, Unpack unpack, Offset offset) {
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  float off[4] = {0.f, 0.f, 0.f, 0.f};
  for (int64_t b = 0; b < n / kQK; ++b) {
    __m256i wv;
    float dw;
    unpack(b, wv, dw);
    for (int j = 0; j < 4; ++j) {
      const __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[j].q + b * kQK));
      const __m256i p = dot_u8s8(wv, av);
      acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(dw * a[j].d[b]), _mm256_cvtepi32_ps(p), acc[j]);
      off[j] = std::fma(offset(b), a[j].s[b], off[j]);
    }
  }
  for (int j = 0; j < 4; ++j) out[j] = hsum(acc[j]) + off[j];
}

void dot_q4_0_q8_x4(int64_t n, const void* w, const ActQ8* a, float* out) {
  const auto* blk = static_cast<const BlockQ4_0*>(w);
  dot_x4(
      n, a, out,
      [&](int64_t b, __m256i& wv, float& dw) {
        wv = unpack_nibbles(blk[b].qs);
        dw = h2f(blk[b].d);
      },
      [&](int64_t b) { return -8.f * h2f(blk[b].d); });
}

void dot_q4_1_q8_x4(int64_t n, const void* w, const ActQ8* a, float* out) {
  const auto* blk = static_cast<const BlockQ4_1*>(w);
  dot_x4(
      n, a, out,
      [&](int64_t b, __m256i& wv, float& dw) {
        wv = unpack_nibbles(blk[b].qs);
        dw = h2f(blk[b].d);
      },
      [&](int64_t b) { return h2f(blk[b].m); });
}

void dot_q8_0_q8_x4(int64_t n, const void* w, const ActQ8* a, float* out) {
  // Signed weights: |w| as the unsigned operand, the sign moved onto each activation.
  const auto* blk = static_cast<const BlockQ8_0*>(w);
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  for (int64_t b = 0; b < n / kQK; ++b) {
    const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk[b].qs));
    const __m256i aw = _mm256_sign_epi8(wv, wv);
    const float dw = h2f(blk[b].d);
    for (int j = 0; j < 4; ++j) {
      const __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[j].q + b * kQK));
      const __m256i p = dot_u8s8(aw, _mm256_sign_epi8(av, wv));
      acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(dw * a[j].d[b]), _mm256_cvtepi32_ps(p), acc[j]);
    }
  }
  for (int j = 0; j < 4; ++j) out[j] = hsum(acc[j]);
}

float dot_f32(int64_t n, const void* w, const float* x) {
  const auto* r = static_cast<const float*>(w);
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(r + i), _mm256_loadu_ps(x + i), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(r + i + 8), _mm256_loadu_ps(x + i + 8), a1);
  }
  for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(r + i), _mm256_loadu_ps(x + i), a0);
  float acc = hsum(_mm256_add_ps(a0, a1));
  for (; i < n; ++i) acc += r[i] * x[i];
  return acc;
}

void row_to_f32_f16(int64_t n, const void* w, float* out) {
  const auto* r = static_cast<const uint16_t*>(w);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, simd::f16x8(r + i));
  for (; i < n; ++i) out[i] = _cvtsh_ss(r[i]);
}

float dot_f16(int64_t n, const void* w, const float* x) {
  const auto* r = static_cast<const uint16_t*>(w);
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 w0 = simd::f16x8(r + i);
    const __m256 w1 = simd::f16x8(r + i + 8);
    a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + i), a0);
    a1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + i + 8), a1);
  }
  for (; i + 8 <= n; i += 8) {
    const __m256 w0 = simd::f16x8(r + i);
    a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + i), a0);
  }
  float acc = hsum(_mm256_add_ps(a0, a1));
  for (; i < n; ++i) acc += h2f(r[i]) * x[i];
  return acc;
}

float dot_bf16(int64_t n, const void* w, const float* x) {
  const auto* r = static_cast<const uint16_t*>(w);
  __m256 a0 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(r + i)));
    const __m256 w0 = _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
    a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + i), a0);
  }
  float acc = hsum(a0);
  for (; i < n; ++i) acc += bf16_to_f32(r[i]) * x[i];
  return acc;
}

void axpy_f32(int64_t n, float a, const void* row, float* acc) {
  const auto* r = static_cast<const float*>(row);
  const __m256 va = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(acc + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(r + i), _mm256_loadu_ps(acc + i)));
  for (; i < n; ++i) acc[i] += a * r[i];
}

void axpy_f16(int64_t n, float a, const void* row, float* acc) {
  const auto* r = static_cast<const uint16_t*>(row);
  const __m256 va = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = simd::f16x8(r + i);
    _mm256_storeu_ps(acc + i, _mm256_fmadd_ps(va, v, _mm256_loadu_ps(acc + i)));
  }
  for (; i < n; ++i) acc[i] += a * h2f(r[i]);
}

// Q8_0 / Q4_0 rows (a quantized KV cache): per block of 32 the codes widen to int32 and convert
// to float exactly, then acc = fma(a * d, code, acc) (cpu/quants.h AxpyFn).
namespace {
METALLIC_SIMD_INLINE void axpy_codes(__m256 ad, __m128i lo, __m128i hi, float* o) {
  const __m256 c0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));
  const __m256 c1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)));
  const __m256 c2 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));
  const __m256 c3 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)));
  _mm256_storeu_ps(o, _mm256_fmadd_ps(ad, c0, _mm256_loadu_ps(o)));
  _mm256_storeu_ps(o + 8, _mm256_fmadd_ps(ad, c1, _mm256_loadu_ps(o + 8)));
  _mm256_storeu_ps(o + 16, _mm256_fmadd_ps(ad, c2, _mm256_loadu_ps(o + 16)));
  _mm256_storeu_ps(o + 24, _mm256_fmadd_ps(ad, c3, _mm256_loadu_ps(o + 24)));
}
}  // namespace

void axpy_q8_0(int64_t n, float a, const void* row, float* acc) {
  const auto* blk = static_cast<const BlockQ8_0*>(row);
  for (int64_t b = 0; b < n / kQK; ++b) {
    const __m128i lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk[b].qs));
    const __m128i hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk[b].qs + 16));
    axpy_codes(_mm256_set1_ps(a * h2f(blk[b].d)), lo, hi, acc + b * kQK);
  }
}

void axpy_q4_0(int64_t n, float a, const void* row, float* acc) {
  const auto* blk = static_cast<const BlockQ4_0*>(row);
  const __m128i mask = _mm_set1_epi8(0x0f), eight = _mm_set1_epi8(8);
  for (int64_t b = 0; b < n / kQK; ++b) {
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk[b].qs));
    const __m128i lo = _mm_sub_epi8(_mm_and_si128(raw, mask), eight);                     // elements 0..15
    const __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(raw, 4), mask), eight);  // 16..31
    axpy_codes(_mm256_set1_ps(a * h2f(blk[b].d)), lo, hi, acc + b * kQK);
  }
}

#else  // no AVX2 in this build: the traits table selects the scalar references instead.

bool available() { return false; }
void quantize_act_q8(const float* x, int64_t n, int8_t* q, float* d, float* s) { quantize_act_q8_ref(x, n, q, d, s); }
float dot_q8_0_q8(int64_t n, const void* w, ActQ8 a) { return dot_q8_0_q8_ref(n, w, a); }
float dot_q4_0_q8(int64_t n, const void* w, ActQ8 a) { return dot_q4_0_q8_ref(n, w, a); }
float dot_q4_1_q8(int64_t n, const void* w, ActQ8 a) { return dot_q4_1_q8_ref(n, w, a); }
void dot_q8_0_q8_x4(int64_t n, const void* w, const ActQ8* a, float* out) { dot_q8_0_q8_x4_ref(n, w, a, out); }
void dot_q4_0_q8_x4(int64_t n, const void* w, const ActQ8* a, float* out) { dot_q4_0_q8_x4_ref(n, w, a, out); }
void dot_q4_1_q8_x4(int64_t n, const void* w, const ActQ8* a, float* out) { dot_q4_1_q8_x4_ref(n, w, a, out); }
float dot_f32(int64_t n, const void* w, const float* x) { return dot_f32_ref(n, w, x); }
float dot_f16(int64_t n, const void* w, const float* x) { return dot_f16_ref(n, w, x); }
void row_to_f32_f16(int64_t n, const void* w, float* out) { metallic::cpu::row_to_f32_f16(n, w, out); }
float dot_bf16(int64_t n, const void* w, const float* x) { return dot_bf16_ref(n, w, x); }
void axpy_f32(int64_t n, float a, const void* row, float* acc) { axpy_f32_ref(n, a, row, acc); }
void axpy_f16(int64_t n, float a, const void* row, float* acc) { axpy_f16_ref(n, a, row, acc); }
void axpy_q8_0(int64_t n, float a, const void* row, float* acc) { axpy_q8_0_ref(n, a, row, acc); }
void axpy_q4_0(int64_t n, float a, const void* row, float* acc) { axpy_q4_0_ref(n, a, row, acc); }

#endif

}  // namespace metallic::cpu::x86
