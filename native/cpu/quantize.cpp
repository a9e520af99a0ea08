#include "cpu/quantize.h"

#include <cmath>
#include <cstring>
#include <string>

#include "core/quant_blocks.h"
#include "cpu/quants.h"

namespace metallic::cpu {

namespace {

void quantize_block_q8_0(const float* x, BlockQ8_0& out) {
  float amax = 0.f;
  for (int i = 0; i < kQK; ++i) amax = std::fmax(amax, std::fabs(x[i]));
  const float d = amax / 127.f;
  float id = d != 0.f ? 1.f / d : 0.f;
  if (!std::isfinite(id)) id = 0.f;  // d subnormal: the block is zero at fp16 anyway (d -> 0)
  out.d = f32_to_fp16(d);
  for (int i = 0; i < kQK; ++i) out.qs[i] = static_cast<int8_t>(std::roundf(x[i] * id));
}

void quantize_block_q4_0(const float* x, BlockQ4_0& out) {
  float amax = std::fabs(x[0]), max = x[0];  // first element of largest |x|, as the reference
  for (int i = 1; i < kQK; ++i)
    if (std::fabs(x[i]) > amax) {
      amax = std::fabs(x[i]);
      max = x[i];
    }
  const float d = max / -8.f;
  float id = d != 0.f ? 1.f / d : 0.f;
  if (!std::isfinite(id)) id = 0.f;  // d subnormal: the block is zero at fp16 anyway (d -> 0)
  out.d = f32_to_fp16(d);
  for (int i = 0; i < kQK / 2; ++i) {
    const auto lo = static_cast<uint8_t>(std::fmin(15.f, std::trunc(x[i] * id + 8.5f)));
    const auto hi = static_cast<uint8_t>(std::fmin(15.f, std::trunc(x[i + kQK / 2] * id + 8.5f)));
    out.qs[i] = static_cast<uint8_t>(lo | (hi << 4));
  }
}

constexpr uint16_t kFp16NaN = 0x7e00;

}  // namespace

void quantize_row_f32(DType to, const float* x, int64_t n, void* dst) {
  for (int64_t b = 0; b < n / kQK; ++b) {
    const float* xb = x + b * kQK;
    bool finite = true;
    for (int i = 0; i < kQK; ++i) finite = finite && std::isfinite(xb[i]);
    switch (to) {
      case DType::kQ8_0: {
        BlockQ8_0& out = static_cast<BlockQ8_0*>(dst)[b];
        if (finite) {
          quantize_block_q8_0(xb, out);
        } else {
          out.d = kFp16NaN;
          std::memset(out.qs, 0, sizeof(out.qs));
        }
        break;
      }
      case DType::kQ4_0: {
        BlockQ4_0& out = static_cast<BlockQ4_0*>(dst)[b];
        if (finite) {
          quantize_block_q4_0(xb, out);
        } else {
          out.d = kFp16NaN;
          std::memset(out.qs, 0x88, sizeof(out.qs));  // code 8: value (8 - 8) * d = NaN
        }
        break;
      }
      case DType::kF32:
      case DType::kF16:
      case DType::kBF16:
      case DType::kQ4_1:
      case DType::kQ5_0:
      case DType::kQ5_1:
      case DType::kQ4_K:
      case DType::kQ5_K:
      case DType::kQ6_K: return;  // not a quantized KV type (documented in quantize.h)
    }
  }
}

void quantize_rows(DType from, const void* src, DType to, void* dst, int64_t row0, int64_t row1, int64_t cols,
                   const char* what) {
  check(from == DType::kF32 || from == DType::kF16 || from == DType::kBF16, ErrorCode::kUnsupportedDType, "quantize",
        std::string(what) + ": can quantize F32, F16 or BF16, got " + dtype_name(from));
  check(to == DType::kQ8_0 || to == DType::kQ4_0, ErrorCode::kUnsupportedDType, "quantize",
        std::string(what) + ": can quantize to Q8_0 or Q4_0, got " + dtype_name(to));
  check(cols > 0 && cols % kQK == 0, ErrorCode::kShapeMismatch, "quantize",
        std::string(what) + ": row length " + std::to_string(cols) + " is not a multiple of 32");
  const RowToF32Fn to_f32 = cpu_traits(from).to_f32;
  const size_t in_row = row_bytes(from, cols);
  const size_t out_row = row_bytes(to, cols);
  float block[kQK];
  for (int64_t r = row0; r < row1; ++r) {
    const char* in = static_cast<const char*>(src) + static_cast<size_t>(r) * in_row;
    char* out = static_cast<char*>(dst) + static_cast<size_t>(r) * out_row;
    for (int64_t b = 0; b < cols / kQK; ++b) {
      to_f32(kQK, in + row_bytes(from, b * kQK), block);
      for (float v : block)
        check(std::isfinite(v), ErrorCode::kCorruptFile, "quantize",
              std::string(what) + ": non-finite weight in row " + std::to_string(r));
      if (to == DType::kQ8_0) {
        quantize_block_q8_0(block, reinterpret_cast<BlockQ8_0*>(out)[b]);
      } else {
        quantize_block_q4_0(block, reinterpret_cast<BlockQ4_0*>(out)[b]);
      }
    }
  }
}

}  // namespace metallic::cpu
