// AMX-INT8 tile kernels for prefill matmuls (see cpu/amx.h), hardware and emulated backends.
//
// Tiles (palette 1), two sets so that block b + 1's multiply is issued before block b's sums are
// read back: set s uses tmm(3s) for the 16 x 16 int32 sums, tmm(3s + 1) for 16 tokens x 32
// activation bytes (one block, loaded straight from the quantized activations with the row
// stride `cols`) and tmm(3s + 2) for the block's weight tile: 8 rows of 64 bytes, row c holding
// elements 4c..4c+3 of 16 output columns (4 bytes each), which is the interleaved layout's chunk c
// of two 8-row groups side by side (cpu/repack.h).
#include <algorithm>
#include <cstring>

#include "core/quant_blocks.h"
#include "cpu/amx.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define METALLIC_HAVE_AVX2 1
#include "cpu/arch/x86_x8_codes.h"
#endif

#if METALLIC_HAVE_AVX2 && defined(__AMX_TILE__) && defined(__AMX_INT8__) && defined(__linux__)
#define METALLIC_HAVE_AMX 1
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#endif

namespace metallic::cpu {

const AmxStatus& amx_status() {
  static const AmxStatus status = [] {
    AmxStatus s;
#if METALLIC_HAVE_AMX
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d) == 0 || (d & (1u << 24)) == 0 || (d & (1u << 25)) == 0) {
      s.reason = "the CPU reports no AMX-TILE and AMX-INT8 (cpuid leaf 7)";
      return s;
    }
    if (__get_cpuid(1, &a, &b, &c, &d) == 0 || (c & (1u << 27)) == 0) {
      s.reason = "the OS does not enable XSAVE state (cpuid OSXSAVE)";
      return s;
    }
    uint32_t lo = 0, hi = 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & 0x60000u) != 0x60000u) {
      s.reason = "the OS does not enable AMX tile state (XCR0 bits 17 and 18)";
      return s;
    }
    constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    if (syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) != 0) {
      s.reason = "Linux refused this process AMX tile data (arch_prctl ARCH_REQ_XCOMP_PERM: errno " +
                 std::to_string(errno) + ")";
      return s;
    }
    s.usable = true;
#else
    s.reason =
        "this build has no AMX-INT8 kernels (it was compiled for a CPU without AMX-TILE / AMX-INT8, or with "
        "METALLIC_NATIVE=OFF)";
#endif
    return s;
  }();
  return status;
}

#if METALLIC_HAVE_AVX2

namespace {

using namespace x86::simd;

constexpr int64_t kWeightTile = 512;  // bytes of one block's weight tile: 8 rows x 64
constexpr int kCols = 16;             // output columns of a tile
// Blocks whose sums are stored before the epilogue runs over them, so each token's accumulators
// stay in registers over a chunk (the lent Xeon's noise did not separate chunks of 1, 4 and 8;
// 8 keeps the chunk's sums, 8 KiB, in L1).
constexpr int kChunk = 8;

struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
static_assert(sizeof(TileConfig) == 64, "the tile configuration is 64 bytes");

TileConfig tile_config() {
  TileConfig c;
  for (int s = 0; s < 2; ++s) {
    c.rows[3 * s] = kAmxTokens;  // sums: 16 tokens x 16 int32
    c.colsb[3 * s] = 4 * kCols;
    c.rows[3 * s + 1] = kAmxTokens;  // activations: 16 tokens x 32 bytes
    c.colsb[3 * s + 1] = kQK;
    c.rows[3 * s + 2] = kQK / 4;  // weights: 8 rows (4 elements each) x 16 columns x 4 bytes
    c.colsb[3 * s + 2] = 4 * kCols;
  }
  return c;
}

#if METALLIC_HAVE_AMX
struct HwTiles {
  static void configure(const TileConfig& c) { _tile_loadconfig(&c); }
  static void release() { _tile_release(); }
  // Zeroes set S's sums and adds the activation tile at `a` (row stride `stride`) times the
  // weight tile at `w`. The intrinsics take tile numbers as literal tokens, hence the macro.
#define METALLIC_AMX_MULTIPLY(C, A, B) \
  do {                                 \
    _tile_zero(C);                     \
    _tile_loadd(A, a, stride);         \
    _tile_loadd(B, w, 4 * kCols);      \
    if constexpr (kSignedW) {          \
      _tile_dpbssd(C, A, B);           \
    } else {                           \
      _tile_dpbsud(C, A, B);           \
    }                                  \
  } while (0)
  template <int S, bool kSignedW>
  static void multiply(const int8_t* a, int64_t stride, const uint8_t* w) {
    if constexpr (S == 0) {
      METALLIC_AMX_MULTIPLY(0, 1, 2);
    } else {
      METALLIC_AMX_MULTIPLY(3, 4, 5);
    }
  }
#undef METALLIC_AMX_MULTIPLY
  template <int S>
  static void store(int32_t* sums) {
    if constexpr (S == 0) {
      _tile_stored(0, sums, 4 * kCols);
    } else {
      _tile_stored(3, sums, 4 * kCols);
    }
  }
};
#endif

// The same operations in portable C++, after Intel's pseudocode for TILELOADD, TILEZERO,
// TDPBSUD / TDPBSSD (each dword of the sums adds the four products of a dword of A, sign-extended,
// and a dword of B, zero- or sign-extended) and TILESTORED. Thread-local tile state.
struct EmuTiles {
  struct State {
    TileConfig cfg;
    uint8_t t[8][16][64];
  };
  static State& state() {
    thread_local State s;
    return s;
  }
  static void configure(const TileConfig& c) {
    state().cfg = c;
    std::memset(state().t, 0, sizeof(state().t));
  }
  static void release() { std::memset(state().t, 0, sizeof(state().t)); }
  static void load(int t, const void* p, int64_t stride) {
    State& s = state();
    std::memset(s.t[t], 0, sizeof(s.t[t]));
    for (int r = 0; r < s.cfg.rows[t]; ++r)
      std::memcpy(s.t[t][r], static_cast<const uint8_t*>(p) + r * stride, s.cfg.colsb[t]);
  }
  template <bool kSignedW>
  static void dot(int c, int a, int b) {
    State& s = state();
    for (int m = 0; m < s.cfg.rows[a]; ++m)
      for (int n = 0; n < s.cfg.colsb[c] / 4; ++n) {
        int32_t acc;
        std::memcpy(&acc, &s.t[c][m][4 * n], 4);
        for (int k = 0; k < s.cfg.colsb[a] / 4; ++k)
          for (int j = 0; j < 4; ++j) {
            const int32_t x = static_cast<int8_t>(s.t[a][m][4 * k + j]);
            const uint8_t wb = s.t[b][k][4 * n + j];
            acc += x * (kSignedW ? static_cast<int32_t>(static_cast<int8_t>(wb)) : static_cast<int32_t>(wb));
          }
        std::memcpy(&s.t[c][m][4 * n], &acc, 4);
      }
  }
  template <int S, bool kSignedW>
  static void multiply(const int8_t* a, int64_t stride, const uint8_t* w) {
    std::memset(state().t[3 * S], 0, sizeof(state().t[0]));
    load(3 * S + 1, a, stride);
    load(3 * S + 2, w, 4 * kCols);
    dot<kSignedW>(3 * S, 3 * S + 1, 3 * S + 2);
  }
  template <int S>
  static void store(int32_t* sums) {
    State& s = state();
    for (int r = 0; r < s.cfg.rows[3 * S]; ++r) std::memcpy(sums + r * kCols, s.t[3 * S][r], s.cfg.colsb[3 * S]);
  }
};

// Sixteen float lanes for the epilogue: one zmm with AVX-512, else two ymm. Every operation is
// per lane and the same IEEE operation as the SIMD kernels' 8-lane one (convert, mul, fma, add).
#if defined(__AVX512F__)
struct V16 {
  __m512 v;
};
METALLIC_SIMD_INLINE V16 v_zero() { return {_mm512_setzero_ps()}; }
METALLIC_SIMD_INLINE V16 v_load(const float* p) { return {_mm512_loadu_ps(p)}; }
METALLIC_SIMD_INLINE V16 v_cvt(const int32_t* p) { return {_mm512_cvtepi32_ps(_mm512_loadu_si512(p))}; }
METALLIC_SIMD_INLINE V16 v_mul(V16 a, float s) { return {_mm512_mul_ps(a.v, _mm512_set1_ps(s))}; }
METALLIC_SIMD_INLINE V16 v_fma(V16 a, V16 b, V16 c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
METALLIC_SIMD_INLINE V16 v_fma(V16 a, float s, V16 c) { return {_mm512_fmadd_ps(a.v, _mm512_set1_ps(s), c.v)}; }
METALLIC_SIMD_INLINE V16 v_add(V16 a, V16 b) { return {_mm512_add_ps(a.v, b.v)}; }
METALLIC_SIMD_INLINE V16 v_sub(V16 a, V16 b) { return {_mm512_sub_ps(a.v, b.v)}; }
METALLIC_SIMD_INLINE void v_store(float* p, V16 v) { _mm512_storeu_ps(p, v.v); }
#else
struct V16 {
  __m256 lo, hi;
};
METALLIC_SIMD_INLINE V16 v_zero() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
METALLIC_SIMD_INLINE V16 v_load(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
METALLIC_SIMD_INLINE V16 v_cvt(const int32_t* p) {
  return {_mm256_cvtepi32_ps(load32(p)), _mm256_cvtepi32_ps(load32(p + 8))};
}
METALLIC_SIMD_INLINE V16 v_mul(V16 a, float s) {
  const __m256 v = _mm256_set1_ps(s);
  return {_mm256_mul_ps(a.lo, v), _mm256_mul_ps(a.hi, v)};
}
METALLIC_SIMD_INLINE V16 v_fma(V16 a, V16 b, V16 c) {
  return {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)};
}
METALLIC_SIMD_INLINE V16 v_fma(V16 a, float s, V16 c) {
  const __m256 v = _mm256_set1_ps(s);
  return {_mm256_fmadd_ps(a.lo, v, c.lo), _mm256_fmadd_ps(a.hi, v, c.hi)};
}
METALLIC_SIMD_INLINE V16 v_add(V16 a, V16 b) { return {_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)}; }
METALLIC_SIMD_INLINE V16 v_sub(V16 a, V16 b) { return {_mm256_sub_ps(a.lo, b.lo), _mm256_sub_ps(a.hi, b.hi)}; }
METALLIC_SIMD_INLINE void v_store(float* p, V16 v) {
  _mm256_storeu_ps(p, v.lo);
  _mm256_storeu_ps(p + 8, v.hi);
}
#endif

// Writes lanes [0, n) of v to dst (n = 8 or 16), added to what is there when accumulating.
METALLIC_SIMD_INLINE void store_lanes(float* dst, V16 v, int n, bool accumulate) {
  alignas(64) float tmp[kCols];
  v_store(tmp, v);
  for (int i = 0; i < n; ++i) dst[i] = accumulate ? dst[i] + tmp[i] : tmp[i];
}

// Decoding: one call per unit (a pair of groups, or one Q6_K group) fills, per block b of 32
// elements, the weight tile wt + 512 b, the 16 columns' scale factors fac[16 b ..] and offset
// coefficients ov[16 b ..] (both as the SIMD kernels compute them).
METALLIC_SIMD_INLINE void put_chunk(uint8_t* wt, int64_t b, int c, int half, __m256i codes) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(wt + b * kWeightTile + 4 * kCols * c + 32 * half), codes);
}

// The 32-wide formats (x86_x8_codes.h kKind): two groups, columns 8h + r = row r of group h.
template <int kKind>
struct Kind32 {
  static constexpr int kGroups = 2;
  static constexpr bool kSignedW = kKind == 2 && kQ8x8Bias == 0;
  static constexpr bool kSubOffset = false;
  static void decode(const char* const g[2], int64_t cols, uint8_t* wt, float* fac, float* ov) {
    for (int64_t b = 0; b < cols / kQK; ++b)
      for (int h = 0; h < 2; ++h) {
        __m256i w[8];
        __m256 dv = _mm256_setzero_ps(), o = _mm256_setzero_ps();
        if (g[h] != nullptr) {
          x8_block_codes<kKind>(g[h], b, w, dv, o);
        } else {
          for (auto& v : w) v = _mm256_setzero_si256();
        }
        for (int c = 0; c < 8; ++c) put_chunk(wt, b, c, h, w[c]);
        _mm256_storeu_ps(fac + kCols * b + 8 * h, dv);
        _mm256_storeu_ps(ov + kCols * b + 8 * h, o);
      }
  }
};

// Q4_K / Q5_K: two groups; block 8 sb + 2p + i is sub-block 2p + i (i = 0: low nibbles of pair p).
template <typename Blk>
struct KindK45 {
  static constexpr int kGroups = 2;
  static constexpr bool kSignedW = false;
  static constexpr bool kSubOffset = true;
  static void decode(const char* const g[2], int64_t cols, uint8_t* wt, float* fac, float* ov) {
    for (int64_t sb = 0; sb < cols / kQK_K; ++sb)
      for (int h = 0; h < 2; ++h) {
        if (g[h] == nullptr) {
          for (int64_t b = 8 * sb; b < 8 * sb + 8; ++b) {
            for (int c = 0; c < 8; ++c) put_chunk(wt, b, c, h, _mm256_setzero_si256());
            _mm256_storeu_ps(fac + kCols * b + 8 * h, _mm256_setzero_ps());
            _mm256_storeu_ps(ov + kCols * b + 8 * h, _mm256_setzero_ps());
          }
          continue;
        }
        const Blk& blk = reinterpret_cast<const Blk*>(g[h])[sb];
        const __m256 dv = f16x8(blk.d), mv = f16x8(blk.dmin);
        for (int p = 0; p < 4; ++p) {
          __m256i planes_lo = _mm256_setzero_si256(), planes_hi = _mm256_setzero_si256();
          if constexpr (std::is_same_v<Blk, BlockQ5_Kx8>) {
            planes_lo = load32(blk.qh[p][0]);
            planes_hi = load32(blk.qh[p][1]);
          }
          const int64_t b = 8 * sb + 2 * p;
          for (int c = 0; c < 8; ++c) {
            __m256i lo, hi;
            k45_chunk_codes(blk, p, c, planes_lo, planes_hi, lo, hi);
            put_chunk(wt, b, c, h, lo);
            put_chunk(wt, b + 1, c, h, hi);
          }
          _mm256_storeu_ps(fac + kCols * b + 8 * h, _mm256_mul_ps(dv, u8x8f(blk.sc[2 * p])));
          _mm256_storeu_ps(fac + kCols * (b + 1) + 8 * h, _mm256_mul_ps(dv, u8x8f(blk.sc[2 * p + 1])));
          _mm256_storeu_ps(ov + kCols * b + 8 * h, _mm256_mul_ps(mv, u8x8f(blk.m[2 * p])));
          _mm256_storeu_ps(ov + kCols * (b + 1) + 8 * h, _mm256_mul_ps(mv, u8x8f(blk.m[2 * p + 1])));
        }
      }
  }
};

// Q6_K: one group; block 8 sb + 4h + k is the 32-element group 4h + k, its first 16 elements in
// columns 0..7 (rows 0..7) and its last 16 in columns 8..15, each half with its own scale.
struct KindQ6K {
  static constexpr int kGroups = 1;
  static constexpr bool kSignedW = true;
  static constexpr bool kSubOffset = false;  // no min term
  static void decode(const char* const g[2], int64_t cols, uint8_t* wt, float* fac, float* /*ov*/) {
    for (int64_t sb = 0; sb < cols / kQK_K; ++sb) {
      const auto& blk = reinterpret_cast<const BlockQ6_Kx8*>(g[0])[sb];
      const __m256 dv = f16x8(blk.d);
      for (int h = 0; h < 2; ++h)
        for (int k = 0; k < 4; ++k) {
          const int64_t b = 8 * sb + 4 * h + k;
          for (int c = 0; c < 8; ++c) {
            const __m256i q = q6_chunk_codes(blk, h, k, c);
            put_chunk(wt, b, c, c < 4 ? 0 : 1, q);
            put_chunk(wt, b, c, c < 4 ? 1 : 0, _mm256_setzero_si256());
          }
          _mm256_storeu_ps(fac + kCols * b, q6_group_scale(blk, dv, 8 * h + 2 * k));
          _mm256_storeu_ps(fac + kCols * b + 8, q6_group_scale(blk, dv, 8 * h + 2 * k + 1));
        }
    }
  }
};

// Accumulators of one tile of tokens for a unit of two groups (the SIMD kernels' acc and off
// chains, 16 rows per token). kSub: the K-quants subtract the min term (acc - off).
template <bool kSub>
struct PairAcc {
  V16 acc[kAmxTokens], off[kAmxTokens];
  void zero() {
    for (int t = 0; t < kAmxTokens; ++t) acc[t] = off[t] = v_zero();
  }
  // Blocks [0, bn) of a chunk: sums (bn, 16 tokens, 16 columns), fac / ov (bn, 16), d / s the
  // tokens' activation scales from the chunk's first block (token t at t * nb). Each token's two
  // chains stay in registers over the chunk.
  METALLIC_SIMD_INLINE void chunk(const int32_t* sums, int bn, int mt, const float* fac, const float* ov,
                                  const float* d, const float* s, int64_t nb) {
    for (int t = 0; t < mt; ++t) {
      V16 ac = acc[t], of = off[t];
      for (int j = 0; j < bn; ++j) {
        ac = v_fma(v_cvt(sums + (j * kAmxTokens + t) * kCols), v_mul(v_load(fac + kCols * j), d[t * nb + j]), ac);
        of = v_fma(v_load(ov + kCols * j), s[t * nb + j], of);
      }
      acc[t] = ac;
      off[t] = of;
    }
  }
  void finish(float* out, int64_t out_stride, int mt, int n, bool accumulate) const {
    for (int t = 0; t < mt; ++t)
      store_lanes(out + t * out_stride, kSub ? v_sub(acc[t], off[t]) : v_add(acc[t], off[t]), n, accumulate);
  }
};

// Q6_K: per token one 8-row chain, the first half's term then the second's (x86_x8.cpp group_q6k).
struct Q6Acc {
  __m256 acc[kAmxTokens];
  void zero() {
    for (auto& v : acc) v = _mm256_setzero_ps();
  }
  METALLIC_SIMD_INLINE void chunk(const int32_t* sums, int bn, int mt, const float* fac, const float*, const float* d,
                                  const float*, int64_t nb) {
    for (int t = 0; t < mt; ++t) {
      __m256 ac = acc[t];
      for (int j = 0; j < bn; ++j) {
        const __m256 da = _mm256_set1_ps(d[t * nb + j]);
        const int32_t* st = sums + (j * kAmxTokens + t) * kCols;
        const float* f = fac + kCols * j;
        ac = _mm256_fmadd_ps(_mm256_cvtepi32_ps(load32(st)), _mm256_mul_ps(_mm256_loadu_ps(f), da), ac);
        ac = _mm256_fmadd_ps(_mm256_cvtepi32_ps(load32(st + 8)), _mm256_mul_ps(_mm256_loadu_ps(f + 8), da), ac);
      }
      acc[t] = ac;
    }
  }
  void finish(float* out, int64_t out_stride, int mt, int, bool accumulate) const {
    for (int t = 0; t < mt; ++t) {
      float* dst = out + t * out_stride;
      _mm256_storeu_ps(dst, accumulate ? _mm256_add_ps(_mm256_loadu_ps(dst), acc[t]) : acc[t]);
    }
  }
};

template <typename Kind>
using AccOf = std::conditional_t<Kind::kGroups == 1, Q6Acc, PairAcc<Kind::kSubOffset>>;

// Block b's multiply into tile set S (see the file comment).
template <class Tiles, bool kSignedW, int S>
METALLIC_SIMD_INLINE void issue(const int8_t* aq, int64_t cols, const uint8_t* wt, int64_t b) {
  Tiles::template multiply<S, kSignedW>(aq + b * kQK, cols, wt + b * kWeightTile);
}

template <class Tiles, class Kind>
void groups_tiles(int64_t cols, const char* groups, size_t group_stride, int64_t g0, int64_t g1, const ActRows& a,
                  float* out, int64_t out_stride, bool accumulate, void* scratch) {
  const int64_t nb = cols / kQK;
  auto* wt = static_cast<uint8_t*>(scratch);
  auto* fac = reinterpret_cast<float*>(wt + nb * kWeightTile);  // (nb, 16)
  float* ov = fac + nb * kCols;                                 // (nb, 16)
  alignas(64) int32_t sums[kChunk * kAmxTokens * kCols];        // a chunk's sums, block-major
  AccOf<Kind> acc;
  Tiles::configure(tile_config());
  for (int64_t g = g0; g < g1; g += Kind::kGroups) {
    const int ng = static_cast<int>(std::min<int64_t>(Kind::kGroups, g1 - g));
    const char* unit[2] = {groups + static_cast<size_t>(g) * group_stride,
                           ng > 1 ? groups + static_cast<size_t>(g + 1) * group_stride : nullptr};
    Kind::decode(unit, cols, wt, fac, ov);
    for (int64_t t0 = 0; t0 < a.nt; t0 += kAmxTokens) {
      const int mt = static_cast<int>(std::min<int64_t>(kAmxTokens, a.nt - t0));
      const int8_t* aq = a.q + t0 * cols;
      acc.zero();
      issue<Tiles, Kind::kSignedW, 0>(aq, cols, wt, 0);
      for (int64_t b0 = 0; b0 < nb; b0 += kChunk) {
        const int bn = static_cast<int>(std::min<int64_t>(kChunk, nb - b0));
        for (int j = 0; j < bn; ++j) {  // block b's sums out while block b + 1 multiplies
          const int64_t b = b0 + j;
          int32_t* dst = sums + j * kAmxTokens * kCols;
          if ((b & 1) == 0) {
            if (b + 1 < nb) issue<Tiles, Kind::kSignedW, 1>(aq, cols, wt, b + 1);
            Tiles::template store<0>(dst);
          } else {
            if (b + 1 < nb) issue<Tiles, Kind::kSignedW, 0>(aq, cols, wt, b + 1);
            Tiles::template store<1>(dst);
          }
        }
        acc.chunk(sums, bn, mt, fac + kCols * b0, ov + kCols * b0, a.d + t0 * nb + b0, a.s + t0 * nb + b0, nb);
      }
      acc.finish(out + t0 * out_stride + 8 * g, out_stride, mt, 8 * ng, accumulate);
    }
  }
  Tiles::release();
}

template <class Tiles>
AmxGroupsFn groups_fn(DType t) {
  switch (t) {
    case DType::kQ4_0: return groups_tiles<Tiles, Kind32<0>>;
    case DType::kQ4_1: return groups_tiles<Tiles, Kind32<1>>;
    case DType::kQ8_0: return groups_tiles<Tiles, Kind32<2>>;
    case DType::kQ5_0: return groups_tiles<Tiles, Kind32<3>>;
    case DType::kQ5_1: return groups_tiles<Tiles, Kind32<4>>;
    case DType::kQ4_K: return groups_tiles<Tiles, KindK45<BlockQ4_Kx8>>;
    case DType::kQ5_K: return groups_tiles<Tiles, KindK45<BlockQ5_Kx8>>;
    case DType::kQ6_K: return groups_tiles<Tiles, KindQ6K>;
    case DType::kF32:
    case DType::kF16:
    case DType::kBF16: return nullptr;
  }
  return nullptr;
}

}  // namespace

size_t amx_scratch_bytes(int64_t cols) {
  const auto nb = static_cast<size_t>(std::max<int64_t>(cols, 0) / kQK);
  return nb * (kWeightTile + 2 * kCols * sizeof(float));
}

AmxGroupsFn amx_groups_fn(DType t, AmxBackend backend) {
  switch (backend) {
    case AmxBackend::kEmulated: return groups_fn<EmuTiles>(t);
    case AmxBackend::kHardware:
#if METALLIC_HAVE_AMX
      return groups_fn<HwTiles>(t);
#else
      return nullptr;
#endif
  }
  return nullptr;
}

#else

size_t amx_scratch_bytes(int64_t) { return 0; }
AmxGroupsFn amx_groups_fn(DType, AmxBackend) { return nullptr; }

#endif

}  // namespace metallic::cpu
