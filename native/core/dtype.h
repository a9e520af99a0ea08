// Storage types and their block geometry. The only place that switches on DType for geometry.
//
// Values are the GGML type ids, so a GGUF tensor's type maps 1:1 (src/metallic/dtypes.py mirrors
// this enum). Quantized types store `block_elems` values in `block_bytes` bytes; a row's length
// must be a multiple of `block_elems`.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "core/error.h"

namespace metallic {

enum class DType : int32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kBF16 = 30,
};

struct DTypeInfo {
  const char* name;
  int32_t block_elems;  // elements per block (1 for plain floats)
  int32_t block_bytes;  // bytes per block
  bool quantized;       // true: matmuls quantize their activations to 8 bits (see cpu/quants.h)
};

constexpr DTypeInfo dtype_info(DType t) {
  switch (t) {
    case DType::kF32: return {"F32", 1, 4, false};
    case DType::kF16: return {"F16", 1, 2, false};
    case DType::kBF16: return {"BF16", 1, 2, false};
    case DType::kQ8_0: return {"Q8_0", 32, 34, true};
    case DType::kQ4_0: return {"Q4_0", 32, 18, true};
    case DType::kQ4_1: return {"Q4_1", 32, 20, true};
    case DType::kQ5_0: return {"Q5_0", 32, 22, true};
    case DType::kQ5_1: return {"Q5_1", 32, 24, true};
    case DType::kQ4_K: return {"Q4_K", 256, 144, true};
    case DType::kQ5_K: return {"Q5_K", 256, 176, true};
    case DType::kQ6_K: return {"Q6_K", 256, 210, true};
  }
  return {"?", 0, 0, false};
}

inline const char* dtype_name(DType t) { return dtype_info(t).name; }

// Validates a raw id coming from Python; throws UnsupportedDType naming `where`.
inline DType dtype_from_int(int32_t id, const std::string& where) {
  switch (static_cast<DType>(id)) {
    case DType::kF32:
    case DType::kF16:
    case DType::kBF16:
    case DType::kQ8_0:
    case DType::kQ4_0:
    case DType::kQ4_1:
    case DType::kQ5_0:
    case DType::kQ5_1:
    case DType::kQ4_K:
    case DType::kQ5_K:
    case DType::kQ6_K: return static_cast<DType>(id);
  }
  fail(ErrorCode::kUnsupportedDType, "dtype",
       where + ": type id " + std::to_string(id) + " is not supported by the engine");
}

// Bytes of one row of n elements. Caller guarantees n % block_elems == 0 (checked at load).
inline size_t row_bytes(DType t, int64_t n) {
  const DTypeInfo i = dtype_info(t);
  return static_cast<size_t>(n / i.block_elems) * static_cast<size_t>(i.block_bytes);
}

// ---------------------------------------------------------------------------------------------
// Scalar half / bfloat16 conversions (bit exact, round-to-nearest-even). SIMD code uses F16C.

inline float fp16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal: renormalise
      exp = 127 - 15 + 1;
      while ((man & 0x400u) == 0) {
        man <<= 1;
        --exp;
      }
      man &= 0x3ffu;
      bits = sign | (exp << 23) | (man << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t f32_to_fp16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t abs = x & 0x7fffffffu;
  if (abs >= 0x7f800000u) return static_cast<uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0));
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow -> inf
  if (abs < 0x38800000u) {                                               // result is subnormal or zero
    if (abs < 0x33000000u) return static_cast<uint16_t>(sign);
    const uint32_t e = abs >> 23;
    const uint32_t m = (abs & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - e;  // 14..24
    // value = m * 2^(e-150); half subnormal unit = 2^-24 -> q = m * 2^(e-126) = m >> (126 - e)
    const uint32_t q = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u);
    const uint32_t half = 1u << (shift - 1);
    uint32_t out = q + ((rem > half || (rem == half && (q & 1u))) ? 1u : 0u);
    return static_cast<uint16_t>(sign | out);
  }
  uint32_t out = ((abs >> 13) - (112u << 10));
  const uint32_t rem = abs & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (out & 1u))) ++out;
  return static_cast<uint16_t>(sign | out);
}

inline float bf16_to_f32(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

}  // namespace metallic
