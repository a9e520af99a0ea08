// AVX2 / VNNI (cpu/vnni.h) kernels for the 8-row interleaved layout (see cpu/repack.h).
//
// Per block of 8 rows: each 32-byte weight chunk holds 4 weights of each row; broadcasting the
// matching 4 activation bytes to all lanes, one u8*s8 multiply-add gives the 8 rows' partial
// sums in the 8 int32 lanes. After a block: one convert, the rows' scales (8 fp16 → f32 at once)
// times the activation scale, one FMA; the offset term (Q4_1 m, Q4_0 -8d, Q8_0 -128d) is one FMA
// against the activation's s.
//
// Prefill and batches: each weight block is unpacked once for a tile of tokens (kTile32 / kTileK;
// its codes stay in registers while the tokens' activation bytes are broadcast against them). The
// 32-wide formats read the activations in ActRows's tile layout (one base pointer per tile) and,
// from four tokens on, add the offset terms in a second pass. Integer sums: see ChunkDot and
// block_sums (int16 partial sums where they cannot overflow). Batch invariance: a token's integer
// sums are exact and its float steps (convert, scale, FMA chains in block order) are the same
// whatever the tile size, so its result does not depend on the batch it ran in.
// Q8_0 without VNNI stores signed q (repack.h kQ8x8Bias = 0), and Q6_K is unpacked to signed
// q - 32: |q| is the unsigned operand and the sign moves onto the broadcast activation bytes.
#include <type_traits>

#include "core/quant_blocks.h"
#include "cpu/repack.h"
#include "cpu/tile.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define METALLIC_HAVE_AVX2 1
#include "cpu/arch/x86_x8_codes.h"
#endif

namespace metallic::cpu {

#if METALLIC_HAVE_AVX2

namespace {

using namespace x86::simd;

// Tokens per unpacked weight block in prefill, the fastest measured on Zen 4 (AVX2): eight for
// the 32-element formats, four for the K-quants (whose per-token sums fill the registers).
constexpr int kTile32 = 8, kTileK = 4;
static_assert(kTile32 == kTile, "group_tokens reads ActRows's tiles of kTile tokens, one per tile");

// Exact int32 sums (8 lanes) of u8*s8 chunk dots: u holds unsigned codes <= kMaxU, s activation
// bytes with |s| <= 127 (the activation quantizer's range). add(u, s) per chunk, flush() at
// least every kFlush chunks and before reading s32. VNNI: one vpdpbusd per chunk (flush is
// free). AVX2: vpmaddubsw gives int16 pair sums (|.| <= 2 * kMaxU * 127), added in int16 while
// they cannot overflow (so never saturate), then widened by one vpmaddwd per flush. Integer sums
// are exact, so the grouping does not change the result.
template <int kMaxU>
struct ChunkDot {
  __m256i s32 = _mm256_setzero_si256();
#if METALLIC_VNNI
  static constexpr int kFlush = 8;
  METALLIC_SIMD_INLINE void add(__m256i u, __m256i s) { s32 = dpbusd(s32, u, s); }
  METALLIC_SIMD_INLINE void flush() {}
#else
  static constexpr int kFlush = 32767 / (2 * kMaxU * 127);  // Q4: 8, Q5 and |Q6 - 32|: 4, |Q8|: 1
  static_assert(kFlush >= 1, "a single vpmaddubsw pair sum could overflow");
  __m256i s16 = _mm256_setzero_si256();
  METALLIC_SIMD_INLINE void add(__m256i u, __m256i s) { s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(u, s)); }
  METALLIC_SIMD_INLINE void flush() {
    s32 = _mm256_add_epi32(s32, _mm256_madd_epi16(s16, _mm256_set1_epi16(1)));
    s16 = _mm256_setzero_si256();
  }
#endif
};

// Sum of m[0..N) (N a power of two) as a balanced tree of add(x, y). The adds of a tree's level
// are independent, where a chain's wait on each other; the empty asm keeps each subtree's sum
// as written (the compiler would otherwise re-associate integer adds back into a chain).
template <int N, typename Add>
METALLIC_SIMD_INLINE __m256i tree_sum(const __m256i* m, Add add) {
  if constexpr (N == 1) {
    return m[0];
  } else {
    __m256i lo = tree_sum<N / 2>(m, add), hi = tree_sum<N / 2>(m + N / 2, add);
    __asm__("" : "+x"(lo), "+x"(hi));
    return add(lo, hi);
  }
}

// The exact int32 sums (8 lanes) of one block's eight chunk dots u[c] * s[c] (ChunkDot's
// operands and bounds). VNNI: one vpdpbusd chain. AVX2: the vpmaddubsw pair sums of each run of
// kRun chunks (at most kFlush: they cannot overflow int16) added as a tree, widened by one
// vpmaddwd per run, and the runs' sums added as a tree.
template <int kMaxU>
METALLIC_SIMD_INLINE __m256i block_sums(const __m256i u[8], const __m256i s[8]) {
#if METALLIC_VNNI
  ChunkDot<kMaxU> dot;
#pragma GCC unroll 8
  for (int c = 0; c < 8; ++c) dot.add(u[c], s[c]);
  return dot.s32;
#else
  constexpr int kFlush = ChunkDot<kMaxU>::kFlush;
  constexpr int kRun = kFlush >= 8 ? 8 : kFlush >= 4 ? 4 : kFlush >= 2 ? 2 : 1;
  const auto add16 = [](__m256i x, __m256i y) { return _mm256_add_epi16(x, y); };
  const auto add32 = [](__m256i x, __m256i y) { return _mm256_add_epi32(x, y); };
  __m256i m[8], runs[8 / kRun];
#pragma GCC unroll 8
  for (int c = 0; c < 8; ++c) m[c] = _mm256_maddubs_epi16(u[c], s[c]);
#pragma GCC unroll 8
  for (int r = 0; r < 8 / kRun; ++r)
    runs[r] = _mm256_madd_epi16(tree_sum<kRun>(m + kRun * r, add16), _mm256_set1_epi16(1));
  return tree_sum<8 / kRun>(runs, add32);
#endif
}

// Tokens t0, t0 + 1, ... of ActRows's tile layout (t0 and the tokens after it in one tile):
// block b of token t0 + t at q + (b * slots + t) * 32 and d / s[b * slots + t], slots = kTile
// (1 for a single token, whose tile is its row).
struct TileView {
  const int8_t* q;
  const float* d;
  const float* s;
  int64_t slots;

  METALLIC_SIMD_INLINE TileView(const ActRows& a, int64_t cols, int64_t t0) {
    const int64_t nb = cols / kQK, first = t0 / kTile * kTile, j = t0 - first;
    slots = a.nt > 1 ? kTile : 1;
    q = a.qt + first * cols + j * kQK;
    d = a.dt + first * nb + j;
    s = a.st + first * nb + j;
  }
  METALLIC_SIMD_INLINE const int8_t* bytes(int64_t b, int t) const { return q + (b * slots + t) * kQK; }
  METALLIC_SIMD_INLINE float scale(int64_t b, int t) const { return d[b * slots + t]; }
  METALLIC_SIMD_INLINE float sum(int64_t b, int t) const { return s[b * slots + t]; }
};

// Every kernel streams its group's weight blocks once from memory, and the hardware prefetcher
// alone did not keep up here: each block's lines are requested kPrefetchAhead bytes early (AMD
// EPYC Zen 3, 2 threads, alternating builds: Gemma 3 decode 11.0-11.6 -> 9.4-10.5 ms per token,
// 61 % of it in the Q8_0 head; SmolLM2 stream_generate 239-251 -> 282-291 tok/s; 2 / 4 / 8-token
// steps 2-10 % faster than prefetching for decode only; 1, 2 and 4 KiB ahead measured alike).
// Groups are contiguous, so the lines ahead are the group's next blocks or the next group's
// first; a prefetch past the tensor's end is harmless (it never faults).
constexpr size_t kPrefetchAhead = 2048;

template <typename Blk>
METALLIC_SIMD_INLINE void prefetch_ahead(const Blk* blk) {
  const char* p = reinterpret_cast<const char*>(blk) + kPrefetchAhead;
#pragma GCC unroll 32
  for (size_t off = 0; off < sizeof(Blk); off += 64) _mm_prefetch(p + off, _MM_HINT_T0);
}

// Zeroes a kernel's accumulators, unrolled: as a loop, GCC turns the zeroing of spilled arrays
// into memset calls, one or two per group and tile (3 % of an 8-token step).
template <int T>
METALLIC_SIMD_INLINE void zero_all(__m256 (&v)[T]) {
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) v[t] = _mm256_setzero_ps();
}

// From this many tokens on, a kernel's scaled sums' and offset terms' accumulators (2T) and a
// block's codes (8) outnumber the 16 registers: the offset terms then run in a second pass over
// the blocks' scales (the same FMAs in the same block order, so the same sums as in one pass).
constexpr int kOffsetPassTokens = 4;

METALLIC_SIMD_INLINE __m256i bcast4(const int8_t* p) {
  int32_t v;
  __builtin_memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

METALLIC_SIMD_INLINE void store8(float* dst, __m256 v, bool accumulate) {
  _mm256_storeu_ps(dst, accumulate ? _mm256_add_ps(_mm256_loadu_ps(dst), v) : v);
}

// acc[t] += block b's exact integer sums of codes w against token t's bytes (block_sums), times
// the rows' scales dv and the token's activation scale: the same steps for every 32-wide block.
template <int kMaxU, int T>
METALLIC_SIMD_INLINE void add_scaled_block(const __m256i w[8], const TileView& v, int64_t b, __m256 dv,
                                           __m256 (&acc)[T]) {
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) {
    __m256i s[8];
#pragma GCC unroll 8
    for (int c = 0; c < 8; ++c) s[c] = bcast4(v.bytes(b, t) + 4 * c);
    const __m256 sums = _mm256_cvtepi32_ps(block_sums<kMaxU>(w, s));
    acc[t] = _mm256_fmadd_ps(sums, _mm256_mul_ps(dv, _mm256_set1_ps(v.scale(b, t))), acc[t]);
  }
}

// off[t] += ov (the rows' offset coefficients of block b) times token t's activation sum s.
template <int T>
METALLIC_SIMD_INLINE void add_offsets(__m256 ov, const TileView& v, int64_t b, __m256 (&off)[T]) {
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) off[t] = _mm256_fmadd_ps(ov, _mm256_set1_ps(v.sum(b, t)), off[t]);
}

// kKind: 0 = Q4_0, 1 = Q4_1, 2 = Q8_0, 3 = Q5_0 (Q4_0's nibbles plus the fifth bits: codes
// 0..31, offset -16 d), 4 = Q5_1 (the same codes, Q4_1's min as the offset). T tokens (the
// first T of ActRows's activation tile that starts at token t0) against one group of 8 rows.
// Chunk c of every format holds elements 4c..4c+3 of the 8 rows (Q4/Q5: the low nibbles of qs
// chunk c for c < 4, the high nibbles of qs chunk c - 4 after).
//
// From kOffsetPassTokens tokens on, the offset terms run in a second pass (see there).
template <int kKind, int T>
void group_tokens(int64_t cols, const void* group, const ActRows& a, int64_t t0, float* out, int64_t out_stride,
                  bool accumulate) {
  static_assert(kKind != 2 || kQ8x8Bias != 0, "signed Q8_0 runs in group_q8s");
  constexpr int kMaxU = kKind == 2 ? 255 : kKind >= 3 ? 31 : 15;
  constexpr bool kOffsetPass = T >= kOffsetPassTokens;
  const int64_t nb = cols / kQK;
  const TileView v(a, cols, t0);
  __m256 acc[T], off[T];
  zero_all(acc);
  zero_all(off);
  for (int64_t b = 0; b < nb; ++b) {
    prefetch_ahead(static_cast<const X8Block<kKind>*>(group) + b);
    __m256i w[8];   // unsigned codes
    __m256 dv, ov;  // per-row scale and offset coefficient
    x8_block_codes<kKind>(group, b, w, dv, ov);
    add_scaled_block<kMaxU>(w, v, b, dv, acc);
    if constexpr (!kOffsetPass) add_offsets(ov, v, b, off);
  }
  if constexpr (kOffsetPass) {
    for (int64_t b = 0; b < nb; ++b) {
      __m256 dv, ov;
      x8_block_scales<kKind>(group, b, dv, ov);
      add_offsets(ov, v, b, off);
    }
  }
  for (int t = 0; t < T; ++t) store8(out + (t0 + t) * out_stride, _mm256_add_ps(acc[t], off[t]), accumulate);
}

// Signed Q8_0 (kQ8x8Bias == 0: builds without VNNI), T tokens of a tile (as group_tokens)
// against one group of 8 rows, chunk by chunk: a chunk's |q| and signs are taken once for all T
// tokens (|q| is the unsigned operand, the sign moves onto the broadcast activation bytes) and
// each token's int32 sums stay in a register, T + 3 live vectors where a whole block's codes and
// signs (16) spilled. A vpmaddubsw pair sum (<= 2 * 128 * 127) fits int16, two may not: one
// vpmaddwd per chunk. No offset term (ov = 0), so no offset chain: bit-identical sums (adding +0
// changes no value; acc is never -0, as it starts at +0).
template <int T>
void group_q8s(int64_t cols, const void* group, const ActRows& a, int64_t t0, float* out, int64_t out_stride,
               bool accumulate) {
  const int64_t nb = cols / kQK;
  const TileView v(a, cols, t0);
  __m256 acc[T];
  zero_all(acc);
  for (int64_t b = 0; b < nb; ++b) {
    const auto& blk = static_cast<const BlockQ8_0x8*>(group)[b];
    prefetch_ahead(&blk);
    __m256i s32[T];
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) s32[t] = _mm256_setzero_si256();
#pragma GCC unroll 8
    for (int c = 0; c < 8; ++c) {
      const __m256i q = load32(blk.qs + 32 * c), u = _mm256_abs_epi8(q);
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) {
        const __m256i s = _mm256_sign_epi8(bcast4(v.bytes(b, t) + 4 * c), q);
        s32[t] = _mm256_add_epi32(s32[t], _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
        // Keeps the running sum in its register: GCC would otherwise re-associate the block's 8T
        // adds and park every product on the stack first (15 % slower at 8 tokens).
        __asm__("" : "+x"(s32[t]));
      }
    }
    const __m256 dv = f16x8(blk.d);
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t)
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s32[t]), _mm256_mul_ps(dv, _mm256_set1_ps(v.scale(b, t))), acc[t]);
  }
  for (int t = 0; t < T; ++t) store8(out + (t0 + t) * out_stride, acc[t], accumulate);
}

// Q4_K / Q5_K: T tokens against one group of 8 rows. Per pair of sub-blocks: 8 chunks, each one
// load and two nibble masks (Q5_K: plus the fifth bits) for one multiply-add per sub-block and
// token; then per sub-block and token one convert and one FMA with the rows' d * sc (8 lanes)
// times the activation scale, and the min term dmin * m * s_a as one FMA.
template <typename Blk, int T>
void group_k45(int64_t cols, const void* group, const ActRows& a, int64_t t0, float* out, int64_t out_stride,
               bool accumulate) {
  constexpr bool kQ5 = std::is_same_v<Blk, BlockQ5_Kx8>;
  const int64_t nsb = cols / kQK_K;
  const TileView v(a, cols, t0);
  __m256 acc[T], off[T];
  zero_all(acc);
  zero_all(off);
  for (int64_t sb = 0; sb < nsb; ++sb) {
    const auto& blk = static_cast<const Blk*>(group)[sb];
    prefetch_ahead(&blk);
    const __m256 dv = f16x8(blk.d), mv = f16x8(blk.dmin);
    for (int p = 0; p < 4; ++p) {
      using Dot = ChunkDot<kQ5 ? 31 : 15>;
      constexpr int kStep = Dot::kFlush < 8 ? Dot::kFlush : 8;
      Dot lo_dot[T], hi_dot[T];
      __m256i planes_lo = _mm256_setzero_si256(), planes_hi = _mm256_setzero_si256();
      if constexpr (kQ5) {
        planes_lo = load32(blk.qh[p][0]);
        planes_hi = load32(blk.qh[p][1]);
      }
      for (int c0 = 0; c0 < 8; c0 += kStep) {
        for (int c = c0; c < c0 + kStep; ++c) {
          __m256i lo, hi;
          k45_chunk_codes(blk, p, c, planes_lo, planes_hi, lo, hi);
#pragma GCC unroll 8
          for (int t = 0; t < T; ++t) {
            lo_dot[t].add(lo, bcast4(v.bytes(8 * sb + 2 * p, t) + 4 * c));
            hi_dot[t].add(hi, bcast4(v.bytes(8 * sb + 2 * p + 1, t) + 4 * c));
          }
        }
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
          lo_dot[t].flush();
          hi_dot[t].flush();
        }
      }
      const __m256 sc0 = _mm256_mul_ps(dv, u8x8f(blk.sc[2 * p])), sc1 = _mm256_mul_ps(dv, u8x8f(blk.sc[2 * p + 1]));
      const __m256 m0 = _mm256_mul_ps(mv, u8x8f(blk.m[2 * p])), m1 = _mm256_mul_ps(mv, u8x8f(blk.m[2 * p + 1]));
      for (int t = 0; t < T; ++t) {
        const int64_t b = 8 * sb + 2 * p;
        const __m256 s0 = _mm256_cvtepi32_ps(lo_dot[t].s32), s1 = _mm256_cvtepi32_ps(hi_dot[t].s32);
        acc[t] = _mm256_fmadd_ps(s0, _mm256_mul_ps(sc0, _mm256_set1_ps(v.scale(b, t))), acc[t]);
        acc[t] = _mm256_fmadd_ps(s1, _mm256_mul_ps(sc1, _mm256_set1_ps(v.scale(b + 1, t))), acc[t]);
        off[t] = _mm256_fmadd_ps(m0, _mm256_set1_ps(v.sum(b, t)), off[t]);
        off[t] = _mm256_fmadd_ps(m1, _mm256_set1_ps(v.sum(b + 1, t)), off[t]);
      }
    }
  }
  for (int t = 0; t < T; ++t) store8(out + (t0 + t) * out_stride, _mm256_sub_ps(acc[t], off[t]), accumulate);
}

// Q4_K, T tokens of a tile (as group_tokens) against one group of 8 rows: each sub-block j of a
// super-block is a Q4_1-like block of 32 (chunk c's low nibbles of pair j / 2 for even j, its high
// nibbles for odd j; scale d * sc[j], offset -dmin * m[j]), taken as group_tokens takes one, so a
// tile of 8 tokens needs 8 int16 sums where both sub-blocks of a pair at once needed 16. The same
// integer sums and the same float steps in the same sub-block order as group_k45: bit-identical.
template <int T>
void group_q4k(int64_t cols, const void* group, const ActRows& a, int64_t t0, float* out, int64_t out_stride,
               bool accumulate) {
  constexpr bool kMinPass = T >= kOffsetPassTokens;
  const int64_t nsb = cols / kQK_K;
  const TileView v(a, cols, t0);
  // Super-block sb's sub-block j: its min terms (coefficients dmin * m[j] of the 8 rows) into off.
  const auto add_mins = [&](__m256 mv, const BlockQ4_Kx8& blk, int64_t sb, int j, __m256(&off)[T]) {
    add_offsets(_mm256_mul_ps(mv, u8x8f(blk.m[j])), v, 8 * sb + j, off);
  };
  __m256 acc[T], off[T];
  zero_all(acc);
  zero_all(off);
  for (int64_t sb = 0; sb < nsb; ++sb) {
    const auto& blk = static_cast<const BlockQ4_Kx8*>(group)[sb];
    prefetch_ahead(&blk);
    const __m256 dv = f16x8(blk.d), mv = f16x8(blk.dmin);
    for (int j = 0; j < 8; ++j) {
      __m256i w[8];
#pragma GCC unroll 8
      for (int c = 0; c < 8; ++c) {
        const __m256i raw = k45_pair_chunk(blk, j / 2, c);
        w[c] = j & 1 ? high_nibbles(raw) : low_nibbles(raw);
      }
      add_scaled_block<15>(w, v, 8 * sb + j, _mm256_mul_ps(dv, u8x8f(blk.sc[j])), acc);
      if constexpr (!kMinPass) add_mins(mv, blk, sb, j, off);
    }
  }
  if constexpr (kMinPass) {
    for (int64_t sb = 0; sb < nsb; ++sb) {
      const auto& blk = static_cast<const BlockQ4_Kx8*>(group)[sb];
      const __m256 mv = f16x8(blk.dmin);
      for (int j = 0; j < 8; ++j) add_mins(mv, blk, sb, j, off);
    }
  }
  for (int t = 0; t < T; ++t) store8(out + (t0 + t) * out_stride, _mm256_sub_ps(acc[t], off[t]), accumulate);
}

// Q6_K: T tokens against one group of 8 rows. Per half h and chunk c: three loads give 4
// elements of 8 rows for each of the half's four 32-element groups (codes 0..63, unpacked as
// the row-major kernel does), made signed q - 32 in -32..31; per group and token one multiply-add
// (|q - 32| times the activation bytes with its sign) into the sum of its 16-element half
// (chunks 0..3, 4..7); then one convert and one FMA per 16 elements with the rows' d * sc
// (8 lanes) times the activation scale.
template <int T>
void group_q6k(int64_t cols, const void* group, const ActRows& a, int64_t t0, float* out, int64_t out_stride,
               bool accumulate) {
  const int64_t nsb = cols / kQK_K;
  const TileView v(a, cols, t0);
  __m256 acc[T];
  zero_all(acc);
  for (int64_t sb = 0; sb < nsb; ++sb) {
    const auto& blk = static_cast<const BlockQ6_Kx8*>(group)[sb];
    prefetch_ahead(&blk);
    const __m256 dv = f16x8(blk.d);
    for (int h = 0; h < 2; ++h)
#pragma GCC unroll 4
      for (int k = 0; k < 4; ++k) {         // the 32-element group 4h + k
        ChunkDot<32> lo_dot[T], hi_dot[T];  // 4 chunks each: kFlush >= 4
#pragma GCC unroll 8
        for (int c = 0; c < 8; ++c) {
          const __m256i q = q6_chunk_codes(blk, h, k, c);
          const __m256i u = _mm256_abs_epi8(q);
#pragma GCC unroll 8
          for (int t = 0; t < T; ++t) {
            const __m256i s = _mm256_sign_epi8(bcast4(v.bytes(8 * sb + 4 * h + k, t) + 4 * c), q);
            if (c < 4) {
              lo_dot[t].add(u, s);
            } else {
              hi_dot[t].add(u, s);
            }
          }
        }
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
          lo_dot[t].flush();
          hi_dot[t].flush();
        }
        const int g = 8 * h + 2 * k;  // 16-element groups g (chunks 0..3) and g + 1 (4..7)
        const __m256 sc0 = q6_group_scale(blk, dv, g), sc1 = q6_group_scale(blk, dv, g + 1);
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
          const __m256 da = _mm256_set1_ps(v.scale(8 * sb + 4 * h + k, t));
          acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lo_dot[t].s32), _mm256_mul_ps(sc0, da), acc[t]);
          acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(hi_dot[t].s32), _mm256_mul_ps(sc1, da), acc[t]);
        }
      }
  }
  for (int t = 0; t < T; ++t) store8(out + (t0 + t) * out_stride, acc[t], accumulate);
}

// The last rem (< kTile) tokens from t0 as one tile of exactly rem tokens: the group's weights
// are decoded once for all of them (a verify pass of 1 + n drafts, a batch of 5 or 7 streams),
// where tiles of 4, 2 and 1 decoded them up to three times. Each token's sums are the same
// whatever the tile size (its own accumulators, the same order): batch invariance holds.
template <int R, typename Group>
METALLIC_SIMD_INLINE void tail_tile(int64_t rem, int64_t t0, Group& group) {
  if constexpr (R > 0) {
    if (rem == R) {
      group(std::integral_constant<int, R>{}, t0);
    } else {
      tail_tile<R - 1>(rem, t0, group);
    }
  }
}

// Runs group(T, t0) (T an std::integral_constant) over tokens [0, nt): tiles of kTile tokens,
// then one tile of the rest.
template <int kTile, typename Group>
void token_tiles(int64_t nt, Group group) {
  int64_t t = 0;
  for (; t + kTile <= nt; t += kTile) group(std::integral_constant<int, kTile>{}, t);
  tail_tile<kTile - 1>(nt - t, t, group);
}

template <int kKind>
void dot_x8(int64_t cols, const void* g, const ActRows& a, float* out, int64_t os, bool acc) {
  if constexpr (kKind == 2 && kQ8x8Bias == 0) {
    token_tiles<kTile32>(a.nt, [&](auto T, int64_t t0) { group_q8s<T>(cols, g, a, t0, out, os, acc); });
  } else {
    token_tiles<kTile32>(a.nt, [&](auto T, int64_t t0) { group_tokens<kKind, T>(cols, g, a, t0, out, os, acc); });
  }
}

template <typename Blk>
void dot_x8_k45(int64_t cols, const void* g, const ActRows& a, float* out, int64_t os, bool acc) {
  token_tiles<kTileK>(a.nt, [&](auto T, int64_t t0) { group_k45<Blk, T>(cols, g, a, t0, out, os, acc); });
}

// Q4_K: sub-block by sub-block (group_q4k) from four tokens on; for one to three, both
// sub-blocks of a pair from one load of their chunks (group_k45: faster there, 49 vs 46 GMAC/s
// for one token). Both give the same bits.
void dot_x8_q4k(int64_t cols, const void* g, const ActRows& a, float* out, int64_t os, bool acc) {
  token_tiles<kTile32>(a.nt, [&](auto T, int64_t t0) {
    if constexpr (T >= kOffsetPassTokens) {
      group_q4k<T>(cols, g, a, t0, out, os, acc);
    } else {
      group_k45<BlockQ4_Kx8, T>(cols, g, a, t0, out, os, acc);
    }
  });
}

void dot_x8_q6k(int64_t cols, const void* g, const ActRows& a, float* out, int64_t os, bool acc) {
  token_tiles<kTileK>(a.nt, [&](auto T, int64_t t0) { group_q6k<T>(cols, g, a, t0, out, os, acc); });
}

}  // namespace

DotX8Fn dot_x8_fn(DType t) {
  switch (t) {
    case DType::kQ4_0: return dot_x8<0>;
    case DType::kQ4_1: return dot_x8<1>;
    case DType::kQ8_0: return dot_x8<2>;
    case DType::kQ5_0: return dot_x8<3>;
    case DType::kQ5_1: return dot_x8<4>;
    case DType::kQ4_K: return dot_x8_q4k;
    case DType::kQ5_K: return dot_x8_k45<BlockQ5_Kx8>;
    case DType::kQ6_K: return dot_x8_q6k;
    case DType::kF32:
    case DType::kF16:
    case DType::kBF16: return nullptr;
  }
  return nullptr;
}

#else

DotX8Fn dot_x8_fn(DType) { return nullptr; }

#endif

}  // namespace metallic::cpu
