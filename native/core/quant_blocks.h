// Block layouts of the quantized storage types (GGUF-compatible), defined once for host, CPU
// kernels, the emulator and shaders. Each struct is followed by a size check.
//
//   Q8_0: value[i] = d * qs[i]                      (32 values, 34 bytes)
//   Q4_0: value[i] = d * (nib[i] - 8)               (32 values, 18 bytes)
//   Q4_1: value[i] = d * nib[i] + m                 (32 values, 20 bytes)
// where nib[i] for i < 16 is the low nibble of qs[i] and for i >= 16 the high nibble of qs[i-16].
#pragma once

#include <cstdint>

namespace metallic {

constexpr int kQK = 32;  // elements per block of the 32-wide formats

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

}  // namespace metallic
