// AVX2 / VNNI (cpu/vnni.h) dots for Q5_0, Q5_1 and the K-quants Q4_K, Q5_K, Q6_K (see cpu/quants.h).
//
// Every (sub-)block of 32 weights is unpacked to unsigned byte codes (0..63) and multiplied with
// its q8a activation block by one u8*s8 multiply-add (vpdpbusd, or vpmaddubsw + vpmaddwd), giving
// eight exact int32 partial sums; one float FMA per sub-block then applies d_w * d_a. K-quant
// scales and mins are decoded once per super-block into eight float lanes (one per sub-block), so
// the min terms of a whole super-block cost one FMA against the activation sums s. Q6_K's -32
// offset is removed in the integer domain, per lane (each lane's 4 elements share a group of 16).
// The _x4 forms unpack each weight block once for four activations (prefill). Two accumulators
// per token keep the FMA chains short; their number and the block order do not depend on how many
// tokens share the pass, so a token's result is bit-identical alone or in a batch (batch
// invariance: prefix reuse, chunked prompts and speculative verification give one-at-a-time
// logits). Every unaligned load reads bytes of one validated
// (super-)block only; activations are read per 32-element block.
#include <cmath>
#include <cstring>
#include <type_traits>

#include "core/quant_blocks.h"
#include "cpu/quants.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include "cpu/arch/x86_simd.h"
#define METALLIC_HAVE_AVX2 1
#endif

namespace metallic::cpu::x86 {

#if METALLIC_HAVE_AVX2

namespace {

using simd::dot_u8s8;
using simd::h2f;
using simd::hsum;
using simd::load32;
using simd::q5_high_bits;
using simd::unpack_nibbles;

// Same as dot_u8s8(u - c, s) for codes u, c in 0..63 (u - c may be negative).
inline __m256i dot_u8s8_minus(__m256i u, __m256i c, __m256i s) {
#if METALLIC_VNNI
  return _mm256_sub_epi32(dot_u8s8(u, s), dot_u8s8(c, s));
#else  // pair sums stay within int16: 2 * 63 * 127 < 2^15
  const __m256i p = _mm256_sub_epi16(_mm256_maddubs_epi16(u, s), _mm256_maddubs_epi16(c, s));
  return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
#endif
}

// Eight unsigned bytes -> eight floats.
inline __m256 u8x8_to_f32(uint64_t v) {
  return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(static_cast<long long>(v))));
}

// The 6-bit scales (sc) and mins (m) of a Q4_K/Q5_K super-block, byte j = sub-block j.
inline void k4_scales(const uint8_t* p, uint64_t& sc, uint64_t& m) {
  uint32_t a, b, c;
  std::memcpy(&a, p, 4);
  std::memcpy(&b, p + 4, 4);
  std::memcpy(&c, p + 8, 4);
  const uint32_t low6 = 0x3f3f3f3fu, low4 = 0x0f0f0f0fu, bits45 = 0x30303030u;
  sc = (a & low6) | static_cast<uint64_t>((c & low4) | ((a >> 2) & bits45)) << 32;
  m = (b & low6) | static_cast<uint64_t>(((c >> 4) & low4) | ((b >> 2) & bits45)) << 32;
}

// ----------------------------------------------------------------------------- Q5_0 / Q5_1

// NT activations against one Q5_0/Q5_1 row. Q5_0's -16 offset and Q5_1's min enter through
// s = d_a * sum(q): one scalar FMA per block and token. Blocks alternate two accumulators.
template <typename Block, int NT>
inline void dot_q5(int64_t n, const void* w, const ActQ8* a, float* out) {
  constexpr bool kHasMin = std::is_same_v<Block, BlockQ5_1>;
  constexpr int NA = 2;  // the same for every NT (batch invariance)
  const auto* blk = static_cast<const Block*>(w);
  __m256 acc[NT][NA];
  float off[NT][NA];
  for (int t = 0; t < NT; ++t)
    for (int k = 0; k < NA; ++k) {
      acc[t][k] = _mm256_setzero_ps();
      off[t][k] = 0.f;
    }
  auto step = [&](int64_t b, int k) {
    const __m256i u = _mm256_or_si256(unpack_nibbles(blk[b].qs), q5_high_bits(blk[b].qh));
    const float dw = h2f(blk[b].d);
    float ow;
    if constexpr (kHasMin) {
      ow = h2f(blk[b].m);
    } else {
      ow = -16.f * dw;
    }
    for (int t = 0; t < NT; ++t) {
      const __m256i p = dot_u8s8(u, load32(a[t].q + b * kQK));
      acc[t][k] = _mm256_fmadd_ps(_mm256_set1_ps(dw * a[t].d[b]), _mm256_cvtepi32_ps(p), acc[t][k]);
      off[t][k] = std::fma(ow, a[t].s[b], off[t][k]);
    }
  };
  const int64_t nb = n / kQK;
  int64_t b = 0;
  for (; b + NA <= nb; b += NA)
    for (int k = 0; k < NA; ++k) step(b + k, k);
  for (; b < nb; ++b) step(b, 0);
  for (int t = 0; t < NT; ++t) {
    __m256 s = acc[t][0];
    float o = off[t][0];
    for (int k = 1; k < NA; ++k) {
      s = _mm256_add_ps(s, acc[t][k]);
      o += off[t][k];
    }
    out[t] = hsum(s) + o;
  }
}

// ----------------------------------------------------------------------------- Q4_K / Q5_K

// NT activations against one Q4_K/Q5_K row. Per super-block: the eight d*sc_j and dmin*m_j are
// decoded to float lanes once; ws[t][j] = d*sc_j*d_a (per token) is broadcast to its sub-block's
// FMA, and all eight min terms go through one FMA with the activation sums s (8 lanes).
template <typename Block, int NT>
inline void dot_k45(int64_t n, const void* w, const ActQ8* a, float* out) {
  constexpr bool kQ5 = std::is_same_v<Block, BlockQ5_K>;
  constexpr int NA = 2;  // independent FMA chains per token, the same for every NT (batch invariance)
  const auto* blk = static_cast<const Block*>(w);
  const __m256i m4 = _mm256_set1_epi8(0x0f);
  const __m256i bit4 = _mm256_set1_epi8(0x10);
  __m256 acc[NT][NA], macc[NT];
  for (int t = 0; t < NT; ++t) {
    macc[t] = _mm256_setzero_ps();
    for (int k = 0; k < NA; ++k) acc[t][k] = _mm256_setzero_ps();
  }
  alignas(32) float ws[NT][8];
  for (int64_t s = 0; s < n / kQK_K; ++s) {
    const Block& b = blk[s];
    uint64_t sc, mn;
    k4_scales(b.scales, sc, mn);
    const __m256 scf = _mm256_mul_ps(_mm256_set1_ps(h2f(b.d)), u8x8_to_f32(sc));
    const __m256 mf = _mm256_mul_ps(_mm256_set1_ps(h2f(b.dmin)), u8x8_to_f32(mn));
    for (int t = 0; t < NT; ++t) {
      _mm256_store_ps(ws[t], _mm256_mul_ps(scf, _mm256_loadu_ps(a[t].d + s * 8)));
      macc[t] = _mm256_fmadd_ps(mf, _mm256_loadu_ps(a[t].s + s * 8), macc[t]);
    }
    __m256i hq = _mm256_setzero_si256();
    if constexpr (kQ5) hq = load32(b.qh);
#pragma GCC unroll 4
    for (int p = 0; p < 4; ++p) {  // sub-blocks 2p (low nibbles) and 2p + 1 (high nibbles)
      const __m256i raw = load32(b.qs + 32 * p);
      __m256i lo = _mm256_and_si256(raw, m4);
      __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
      if constexpr (kQ5) {  // bit j of qh[l] is bit 4 of sub-block j's code l; consume 2 bits
        lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(hq, 4), bit4));
        hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(hq, 3), bit4));
        hq = _mm256_srli_epi16(hq, 2);
      }
      for (int t = 0; t < NT; ++t) {
        const int8_t* q = a[t].q + s * kQK_K + 64 * p;
        __m256& A = acc[t][p % NA];
        A = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_u8s8(lo, load32(q))), _mm256_broadcast_ss(&ws[t][2 * p]), A);
        A = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_u8s8(hi, load32(q + 32))), _mm256_broadcast_ss(&ws[t][2 * p + 1]),
                            A);
      }
    }
  }
  for (int t = 0; t < NT; ++t) {
    __m256 sum = acc[t][0];
    for (int k = 1; k < NA; ++k) sum = _mm256_add_ps(sum, acc[t][k]);
    out[t] = hsum(sum) - hsum(macc[t]);
  }
}

// ----------------------------------------------------------------------------- Q6_K

// NT activations against one Q6_K row. Sub-block j's dot yields lanes 0..3 from group 2j and
// lanes 4..7 from group 2j + 1, so its lane scales are (d*sc[2j] x4, d*sc[2j+1] x4) * d_a.
template <int NT>
inline void dot_q6k(int64_t n, const void* w, const ActQ8* a, float* out) {
  constexpr int NA = 2;  // as dot_k45
  const auto* blk = static_cast<const BlockQ6_K*>(w);
  const __m256i m4 = _mm256_set1_epi8(0x0f);
  const __m256i m30 = _mm256_set1_epi8(0x30);
  const __m256i c32 = _mm256_set1_epi8(32);
  const __m256i pick[4] = {_mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1), _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3),
                           _mm256_setr_epi32(4, 4, 4, 4, 5, 5, 5, 5), _mm256_setr_epi32(6, 6, 6, 6, 7, 7, 7, 7)};
  __m256 acc[NT][NA];
  for (int t = 0; t < NT; ++t)
    for (int k = 0; k < NA; ++k) acc[t][k] = _mm256_setzero_ps();
  for (int64_t s = 0; s < n / kQK_K; ++s) {
    const BlockQ6_K& b = blk[s];
    const __m128i sc8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.scales));
    const __m256 dv = _mm256_set1_ps(h2f(b.d));
    const __m256 gs[2] = {_mm256_mul_ps(dv, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc8))),
                          _mm256_mul_ps(dv, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(sc8, 8))))};
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {  // halves of 128 values: sub-blocks 4h .. 4h + 3
      const __m256i ql0 = load32(b.ql + 64 * h), ql1 = load32(b.ql + 64 * h + 32), qh = load32(b.qh + 32 * h);
      const __m256i u[4] = {_mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30)),
                            _mm256_or_si256(_mm256_and_si256(ql1, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30)),
                            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), _mm256_and_si256(qh, m30)),
                            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                                            _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30))};
#pragma GCC unroll 4
      for (int k = 0; k < 4; ++k) {
        const int64_t j = s * 8 + 4 * h + k;  // activation block
        const __m256 lane = _mm256_permutevar8x32_ps(gs[h], pick[k]);
        for (int t = 0; t < NT; ++t) {
          const __m256i p = dot_u8s8_minus(u[k], c32, load32(a[t].q + j * kQK));
          __m256& A = acc[t][k % NA];
          A = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_mul_ps(lane, _mm256_set1_ps(a[t].d[j])), A);
        }
      }
    }
  }
  for (int t = 0; t < NT; ++t) {
    __m256 sum = acc[t][0];
    for (int k = 1; k < NA; ++k) sum = _mm256_add_ps(sum, acc[t][k]);
    out[t] = hsum(sum);
  }
}

template <void (*Impl)(int64_t, const void*, const ActQ8*, float*)>
inline float dot_one(int64_t n, const void* w, ActQ8 a) {
  float out;
  Impl(n, w, &a, &out);
  return out;
}

}  // namespace

float dot_q5_0_q8(int64_t n, const void* w, ActQ8 a) { return dot_one<dot_q5<BlockQ5_0, 1>>(n, w, a); }
float dot_q5_1_q8(int64_t n, const void* w, ActQ8 a) { return dot_one<dot_q5<BlockQ5_1, 1>>(n, w, a); }
float dot_q4_K_q8(int64_t n, const void* w, ActQ8 a) { return dot_one<dot_k45<BlockQ4_K, 1>>(n, w, a); }
float dot_q5_K_q8(int64_t n, const void* w, ActQ8 a) { return dot_one<dot_k45<BlockQ5_K, 1>>(n, w, a); }
float dot_q6_K_q8(int64_t n, const void* w, ActQ8 a) { return dot_one<dot_q6k<1>>(n, w, a); }
void dot_q5_0_q8_x4(int64_t n, const void* w, const ActQ8* a, float* out) { dot_q5<BlockQ5_0, 4>(n, w, a, out); }
void dot_q5_1_q8_x4(int64_t n, const void* w, const ActQ8* a, float* out) { dot_q5<BlockQ5_1, 4>(n, w, a, out); }
void dot_q4_K_q8_x4(int64_t n, const void* w, const ActQ8* a, float* out) { dot_k45<BlockQ4_K, 4>(n, w, a, out); }
void dot_q5_K_q8_x4(int64_t n, const void* w, const ActQ8* a, float* out) { dot_k45<BlockQ5_K, 4>(n, w, a, out); }
void dot_q6_K_q8_x4(int64_t n, const void* w, const ActQ8* a, float* out) { dot_q6k<4>(n, w, a, out); }

#else  // no AVX2 in this build: the traits table selects the scalar references instead.

float dot_q5_0_q8(int64_t n, const void* w, ActQ8 a) { return dot_q5_0_q8_ref(n, w, a); }
float dot_q5_1_q8(int64_t n, const void* w, ActQ8 a) { return dot_q5_1_q8_ref(n, w, a); }
float dot_q4_K_q8(int64_t n, const void* w, ActQ8 a) { return dot_q4_K_q8_ref(n, w, a); }
float dot_q5_K_q8(int64_t n, const void* w, ActQ8 a) { return dot_q5_K_q8_ref(n, w, a); }
float dot_q6_K_q8(int64_t n, const void* w, ActQ8 a) { return dot_q6_K_q8_ref(n, w, a); }
void dot_q5_0_q8_x4(int64_t n, const void* w, const ActQ8* a, float* out) { dot_q5_0_q8_x4_ref(n, w, a, out); }
void dot_q5_1_q8_x4(int64_t n, const void* w, const ActQ8* a, float* out) { dot_q5_1_q8_x4_ref(n, w, a, out); }
void dot_q4_K_q8_x4(int64_t n, const void* w, const ActQ8* a, float* out) { dot_q4_K_q8_x4_ref(n, w, a, out); }
void dot_q5_K_q8_x4(int64_t n, const void* w, const ActQ8* a, float* out) { dot_q5_K_q8_x4_ref(n, w, a, out); }
void dot_q6_K_q8_x4(int64_t n, const void* w, const ActQ8* a, float* out) { dot_q6_K_q8_x4_ref(n, w, a, out); }

#endif

}  // namespace metallic::cpu::x86
