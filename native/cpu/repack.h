// Load-time repacking of quantized weights (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K) into 8-row interleaved
// blocks, so one 32-byte load holds four consecutive weights of each of eight rows. The kernels
// then broadcast four activation bytes to all lanes and one u8*s8 multiply-add produces eight
// rows' partial sums at once: no horizontal reductions and one scale FMA per 8 row-blocks,
// which is what makes decode memory-bound instead of instruction-bound.
//
//   BlockQ4_0x8: d[8] (fp16, per row), qs[128]: chunk j (0..3) = bytes 4j..4j+3 of each row's
//                16 packed bytes (row r at 4*(8j + r)); low nibbles = elements 4j..4j+3, high
//                nibbles = elements 16+4j..16+4j+3.
//   BlockQ4_1x8: d[8], m[8] (fp16), qs[128] as Q4_0x8.
//   BlockQ5_0x8: d[8], qh[32], qs[128]: qs as Q4_0x8; chunk c (0..7) of the kernel is the low
//                nibbles of qs chunk c (c < 4) or the high nibbles of qs chunk c - 4: elements
//                4c..4c+3 either way. qh holds the fifth bits as bit planes in the chunks' byte
//                order: bit c of qh[4r + k] = row r's element 4c + k, so chunk c's bits are one
//                shift and one mask to 0x10 per byte. Same size as the 8 source blocks (176 bytes).
//   BlockQ4_Kx8: per super-block of 256 (8 rows): d[8], dmin[8] (fp16), the 6-bit scales and
//                mins unpacked to bytes sub-block-major (8 lanes = 8 rows, one u8->f32 convert
//                each), qs chunked as Q4_0x8 per pair of sub-blocks: low nibbles = sub-block 2p,
//                high nibbles = 2p + 1. 1184 bytes for 8 x 144 (+2.8 %).
//   BlockQ5_1x8: d[8], m[8], qh[8], qs[128]: as BlockQ5_0x8 with Q4_1's minimum.
//   BlockQ5_Kx8: BlockQ4_Kx8 plus the fifth bits as bit planes per sub-block, as Q5_0x8's
//                (1440 bytes for 8 x 176, +2.3 %).
//   BlockQ6_Kx8: per super-block of 256 (8 rows): d[8], the 16 group scales sub-block-major,
//                ql and qh chunked so that one load of each gives 4 elements of 8 rows for the
//                four 32-element groups of a half (the row-major kernel's unpacking, per chunk).
//                Exactly the 8 source blocks' size.
//   BlockQ8_0x8: d[8], qs[256]: chunk j (0..7) = elements 4j..4j+3 of each row, stored as
//                q + kQ8x8Bias: with VNNI q + 128 (unsigned: vpdpbusd's u8 operand; the dot
//                subtracts 128 * sum(q_a) via the s term); without it q itself (signed: the
//                AVX2 kernel multiplies |q| by sign(q) * q_a, as the row-major kernels do,
//                since q + 128 would saturate vpmaddubsw's pair sums).
#pragma once

#include <cstdint>

#include "core/device.h"
#include "cpu/vnni.h"

namespace metallic::cpu {

struct BlockQ4_0x8 {
  uint16_t d[8];
  uint8_t qs[128];
};
static_assert(sizeof(BlockQ4_0x8) == 144, "BlockQ4_0x8 must be 144 bytes");

struct BlockQ4_1x8 {
  uint16_t d[8];
  uint16_t m[8];
  uint8_t qs[128];
};
static_assert(sizeof(BlockQ4_1x8) == 160, "BlockQ4_1x8 must be 160 bytes");

#if METALLIC_VNNI
inline constexpr int kQ8x8Bias = 128;
#else
inline constexpr int kQ8x8Bias = 0;
#endif

struct BlockQ5_0x8 {
  uint16_t d[8];
  uint8_t qh[32];  // bit c of qh[4r + k] = the fifth bit of row r's element 4c + k
  uint8_t qs[128];
};
static_assert(sizeof(BlockQ5_0x8) == 176, "BlockQ5_0x8 must be 176 bytes");

struct BlockQ4_Kx8 {
  uint16_t d[8];     // per row: the super-block's scale of sub-block scales
  uint16_t dmin[8];  // per row: the super-block's scale of sub-block mins
  uint8_t sc[8][8];  // sc[j][r]: 6-bit scale of sub-block j of row r (unpacked at load)
  uint8_t m[8][8];   // m[j][r]: 6-bit min of sub-block j of row r
  uint8_t qs[1024];  // pair p (0..3), chunk c (0..7): qs[256p + 32c + 4r + k] = row r's byte 32p + 4c + k
};
static_assert(sizeof(BlockQ4_Kx8) == 1184, "BlockQ4_Kx8 must be 1184 bytes");

struct BlockQ5_1x8 {
  uint16_t d[8];
  uint16_t m[8];
  uint8_t qh[32];  // as BlockQ5_0x8
  uint8_t qs[128];
};
static_assert(sizeof(BlockQ5_1x8) == 8 * 24, "BlockQ5_1x8 must be 8 Q5_1 blocks");

struct BlockQ5_Kx8 {
  uint16_t d[8];
  uint16_t dmin[8];
  uint8_t sc[8][8];
  uint8_t m[8][8];
  uint8_t qh[4][2][32];  // bit c of qh[p][h][4r + k]: fifth bit of row r's element 4c + k of sub-block 2p + h
  uint8_t qs[1024];      // as BlockQ4_Kx8
};
static_assert(sizeof(BlockQ5_Kx8) == 1440, "BlockQ5_Kx8 must be 1440 bytes");

struct BlockQ6_Kx8 {
  uint16_t d[8];       // per row: the super-block scale
  int8_t sc[16][8];    // sc[g][r]: scale of 16-element group g of row r
  uint8_t ql[4][256];  // ql[2h + q][32c + 4r + k] = row r's ql[64h + 32q + 4c + k]
  uint8_t qh[2][256];  // qh[h][32c + 4r + k] = row r's qh[32h + 4c + k]
};
static_assert(sizeof(BlockQ6_Kx8) == 8 * 210, "BlockQ6_Kx8 must be 8 Q6_K blocks");

struct BlockQ8_0x8 {
  uint16_t d[8];
  uint8_t qs[256];
};
static_assert(sizeof(BlockQ8_0x8) == 272, "BlockQ8_0x8 must be 272 bytes");

// The weight a BlockQ8_0x8 byte stores.
inline int q8x8_value(uint8_t byte) {
  return kQ8x8Bias != 0 ? static_cast<int>(byte) - kQ8x8Bias : static_cast<int>(static_cast<int8_t>(byte));
}

// Bytes of one interleaved block of 8 rows (a block: the type's block_elems, 32 or 256), or 0
// if the type has no interleaved form.
size_t interleaved_block_bytes(DType t);

// Repacks rows [8 * g0, 8 * g1) of `src` (kRows) into `dst` (groups g0..g1 of the kInterleaved8
// layout of `dst`). Thread-safe for disjoint group ranges.
void repack_groups(const Tensor& src, const Tensor& dst, int64_t g0, int64_t g1);

// Dequantizes row r of an interleaved tensor (embedding lookups from a repacked tied table).
void interleaved_row_to_f32(const Tensor& t, int64_t r, float* out);

// Address of tail row r (r >= 8 * (rows / 8)) of an interleaved tensor.
const void* interleaved_tail_row(const Tensor& t, int64_t r);

// Kernels (cpu/arch/x86_x8.cpp): out[t * out_stride + i] (+)= dot(row 8g+i, activation t) for
// i < 8 and the nt tokens of `a` (q rows of `cols`, per-32 scales d and s). Null when the build
// has no AVX2 (then weights are never repacked).
//
// qt, dt, st: the same values per tile of kTile tokens (cpu/tile.h), the layout the kernels
// read (the rows are for the AMX tiles and the row-major tail rows). Block b of token 8i + j
// (tile i) is at qt + 8i * cols + (8b + j) * 32 and dt / st + 8i * nb + 8b + j (nb = cols / 32);
// a last tile of fewer than 8 tokens leaves its missing tokens' slots unset. A kernel then
// addresses a tile's tokens from one base pointer per array with constant offsets, where the row
// layout needs a pointer per token and array (more than x86 has registers for). With nt == 1 the
// tile is the row (q, d, s: one slot per block).
struct ActRows {
  const int8_t* q;  // (nt, cols)
  const float* d;   // (nt, cols / 32)
  const float* s;   // (nt, cols / 32)
  int64_t nt;
  const int8_t* qt;  // tiled q, d and s (above)
  const float* dt;
  const float* st;
};

// Copies token t's quantized blocks (q: its row of cols, d, s: its nb scales) to the tiled
// layout of ActRows. qt may be null (scales only).
void tile_token(int64_t t, int64_t cols, const int8_t* q, const float* d, const float* s, int8_t* qt, float* dt,
                float* st);
using DotX8Fn = void (*)(int64_t cols, const void* group, const ActRows& a, float* out, int64_t out_stride,
                         bool accumulate);
DotX8Fn dot_x8_fn(DType t);

}  // namespace metallic::cpu
