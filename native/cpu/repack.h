// Load-time repacking of 32-wide quantized weights (Q4_0, Q4_1, Q8_0) into 8-row interleaved
// blocks, so one 32-byte load holds four consecutive weights of each of eight rows. The kernels
// then broadcast four activation bytes to all lanes and one u8*s8 multiply-add produces eight
// rows' partial sums at once: no horizontal reductions and one scale FMA per 8 row-blocks,
// which is what makes decode memory-bound instead of instruction-bound.
//
//   BlockQ4_0x8: d[8] (fp16, per row), qs[128]: chunk j (0..3) = bytes 4j..4j+3 of each row's
//                16 packed bytes (row r at 4*(8j + r)); low nibbles = elements 4j..4j+3, high
//                nibbles = elements 16+4j..16+4j+3.
//   BlockQ4_1x8: d[8], m[8] (fp16), qs[128] as Q4_0x8.
//   BlockQ8_0x8: d[8], qs[256]: chunk j (0..7) = elements 4j..4j+3 of each row, stored as
//                q + 128 (unsigned), so the dot subtracts 128 * sum(q_a) via the s term.
#pragma once

#include <cstdint>

#include "core/device.h"

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

struct BlockQ8_0x8 {
  uint16_t d[8];
  uint8_t qs[256];
};
static_assert(sizeof(BlockQ8_0x8) == 272, "BlockQ8_0x8 must be 272 bytes");

// Bytes of one interleaved block of 8 rows, or 0 if the type has no interleaved form.
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
struct ActRows {
  const int8_t* q;  // (nt, cols)
  const float* d;   // (nt, cols / 32)
  const float* s;   // (nt, cols / 32)
  int64_t nt;
};
using DotX8Fn = void (*)(int64_t cols, const void* group, const ActRows& a, float* out, int64_t out_stride,
                         bool accumulate);
DotX8Fn dot_x8_fn(DType t);

}  // namespace metallic::cpu
