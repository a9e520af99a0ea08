// Block layouts of the quantized storage types (GGUF-compatible), defined once for host, CPU
// kernels, the emulator and shaders. Each struct is followed by a size check.
//
//   Q8_0: value[i] = d * qs[i]                      (32 values, 34 bytes)
//   Q4_0: value[i] = d * (nib[i] - 8)               (32 values, 18 bytes)
//   Q4_1: value[i] = d * nib[i] + m                 (32 values, 20 bytes)
//   Q5_0: value[i] = d * (q5[i] - 16)               (32 values, 22 bytes)
//   Q5_1: value[i] = d * q5[i] + m                  (32 values, 24 bytes)
// where nib[i] for i < 16 is the low nibble of qs[i] and for i >= 16 the high nibble of qs[i-16],
// and q5[i] = nib[i] | (bit i of the little-endian uint32 qh) << 4.
//
// K-quants: super-blocks of 256 values (kQK_K) split into sub-blocks, each with its own small
// integer scale (and min) that multiplies the fp16 super-block scale d (and dmin):
//   Q4_K: value = d * sc[j] * nib - dmin * m[j]           (8 sub-blocks of 32, 144 bytes)
//   Q5_K: value = d * sc[j] * (nib | hbit << 4) - dmin * m[j]   (8 of 32, 176 bytes)
//   Q6_K: value = d * sc[g] * (q6 - 32)                   (16 groups of 16, 210 bytes)
// The layouts of the packed fields are spelled out at each struct.
#pragma once

#ifdef __METAL_VERSION__
#include <metal_stdlib>  // shaders: fixed-width integer types come with the standard library
// MSL keeps every program-scope variable, constexpr ones included, in the constant address space
// ("program scope variable must reside in constant address space"; scripts/check_msl_apple.py).
#define METALLIC_PROGRAM_SCOPE constant
#else
#include <cstdint>
#define METALLIC_PROGRAM_SCOPE
#endif

namespace metallic {

constexpr METALLIC_PROGRAM_SCOPE int kQK = 32;  // elements per block of the 32-wide formats

struct BlockQ8_0 {
  uint16_t d;  // fp16 scale
  int8_t qs[kQK];
};
static_assert(sizeof(BlockQ8_0) == 34, "BlockQ8_0 must be 34 bytes");

struct BlockQ4_0 {
  uint16_t d;  // fp16 scale
  uint8_t qs[kQK / 2];
};
static_assert(sizeof(BlockQ4_0) == 18, "BlockQ4_0 must be 18 bytes");

struct BlockQ4_1 {
  uint16_t d;  // fp16 scale
  uint16_t m;  // fp16 minimum
  uint8_t qs[kQK / 2];
};
static_assert(sizeof(BlockQ4_1) == 20, "BlockQ4_1 must be 20 bytes");

struct BlockQ5_0 {
  uint16_t d;      // fp16 scale
  uint8_t qh[4];   // bit i (of the little-endian uint32) = bit 4 of value i
  uint8_t qs[16];  // low nibbles, packed as in Q4_0
};
static_assert(sizeof(BlockQ5_0) == 22, "BlockQ5_0 must be 22 bytes");

struct BlockQ5_1 {
  uint16_t d;      // fp16 scale
  uint16_t m;      // fp16 minimum
  uint8_t qh[4];   // bit i = bit 4 of value i
  uint8_t qs[16];  // low nibbles, packed as in Q4_0
};
static_assert(sizeof(BlockQ5_1) == 24, "BlockQ5_1 must be 24 bytes");

constexpr METALLIC_PROGRAM_SCOPE int kQK_K = 256;  // elements per K-quant super-block

// Q4_K / Q5_K 6-bit scales and mins of the 8 sub-blocks, packed into 12 bytes:
//   bytes 0..3:  sc[0..3] in bits 0..5; bits 6..7 are bits 4..5 of sc[4..7]
//   bytes 4..7:  m[0..3]  in bits 0..5; bits 6..7 are bits 4..5 of m[4..7]
//   bytes 8..11: low nibble = bits 0..3 of sc[4..7], high nibble = bits 0..3 of m[4..7]
constexpr METALLIC_PROGRAM_SCOPE int kKScaleBytes = 12;

// Sub-block j (values 32j .. 32j+31): nib[l] = qs[32 * (j / 2) + l] >> (4 * (j % 2)) & 0xf.
struct BlockQ4_K {
  uint16_t d;                    // fp16 super-block scale of the sub-block scales
  uint16_t dmin;                 // fp16 super-block scale of the sub-block mins
  uint8_t scales[kKScaleBytes];  // 6-bit sc[8] and m[8], packed as above
  uint8_t qs[kQK_K / 2];         // 4-bit quants
};
static_assert(sizeof(BlockQ4_K) == 144, "BlockQ4_K must be 144 bytes");

// As Q4_K, plus bit 4 of value 32j + l is bit j of qh[l].
struct BlockQ5_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[kKScaleBytes];
  uint8_t qh[kQK_K / 8];  // high bits: bit j of qh[l] belongs to sub-block j, element l
  uint8_t qs[kQK_K / 2];  // low 4 bits, as Q4_K
};
static_assert(sizeof(BlockQ5_K) == 176, "BlockQ5_K must be 176 bytes");

// Two halves of 128 values; in half h, sub-block t (0..3, values 128h + 32t + l, l < 32):
//   low 4 bits  = ql[64h + 32 * (t % 2) + l] >> (4 * (t / 2)) & 0xf
//   high 2 bits = qh[32h + l] >> (2t) & 3
//   q6 = low | high << 4 (0..63); value = d * scales[v / 16] * (q6 - 32) for value index v.
struct BlockQ6_K {
  uint8_t ql[kQK_K / 2];
  uint8_t qh[kQK_K / 4];
  int8_t scales[kQK_K / 16];  // signed 8-bit scale per group of 16 values
  uint16_t d;                 // fp16 super-block scale
};
static_assert(sizeof(BlockQ6_K) == 210, "BlockQ6_K must be 210 bytes");

}  // namespace metallic

#undef METALLIC_PROGRAM_SCOPE
