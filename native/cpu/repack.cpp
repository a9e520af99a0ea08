#include "cpu/repack.h"

#include <cstring>

#include "core/quant_blocks.h"

namespace metallic::cpu {

size_t interleaved_block_bytes(DType t) {
  switch (t) {
    case DType::kQ4_0: return sizeof(BlockQ4_0x8);
    case DType::kQ4_1: return sizeof(BlockQ4_1x8);
    case DType::kQ8_0: return sizeof(BlockQ8_0x8);
    case DType::kF32:
    case DType::kF16:
    case DType::kBF16:
    case DType::kQ5_0:
    case DType::kQ5_1:
    case DType::kQ4_K:
    case DType::kQ5_K:
    case DType::kQ6_K: return 0;
  }
  return 0;
}

namespace {

// Interleaves the 16 packed nibble bytes of 8 rows' blocks b into chunk order.
inline void interleave16(const uint8_t* const rows_qs[8], uint8_t* qs) {
  for (int j = 0; j < 4; ++j)
    for (int r = 0; r < 8; ++r) std::memcpy(qs + 4 * (8 * j + r), rows_qs[r] + 4 * j, 4);
}

}  // namespace

void repack_groups(const Tensor& src, const Tensor& dst, int64_t g0, int64_t g1) {
  const int64_t nb = src.cols / kQK;
  for (int64_t g = g0; g < g1; ++g) {
    auto* out = static_cast<uint8_t*>(dst.buf.host) + dst.offset + static_cast<size_t>(g) * dst.group_stride;
    for (int64_t b = 0; b < nb; ++b) {
      switch (src.dtype) {
        case DType::kQ4_0: {
          auto* o = reinterpret_cast<BlockQ4_0x8*>(out) + b;
          const uint8_t* qs[8];
          for (int r = 0; r < 8; ++r) {
            const auto* blk = static_cast<const BlockQ4_0*>(src.row(8 * g + r)) + b;
            o->d[r] = blk->d;
            qs[r] = blk->qs;
          }
          interleave16(qs, o->qs);
          break;
        }
        case DType::kQ4_1: {
          auto* o = reinterpret_cast<BlockQ4_1x8*>(out) + b;
          const uint8_t* qs[8];
          for (int r = 0; r < 8; ++r) {
            const auto* blk = static_cast<const BlockQ4_1*>(src.row(8 * g + r)) + b;
            o->d[r] = blk->d;
            o->m[r] = blk->m;
            qs[r] = blk->qs;
          }
          interleave16(qs, o->qs);
          break;
        }
        case DType::kQ8_0: {
          auto* o = reinterpret_cast<BlockQ8_0x8*>(out) + b;
          for (int r = 0; r < 8; ++r) {
            const auto* blk = static_cast<const BlockQ8_0*>(src.row(8 * g + r)) + b;
            o->d[r] = blk->d;
            for (int j = 0; j < 8; ++j)
              for (int k = 0; k < 4; ++k)
                o->qs[4 * (8 * j + r) + k] = static_cast<uint8_t>(static_cast<int>(blk->qs[4 * j + k]) + 128);
          }
          break;
        }
        case DType::kF32:
        case DType::kF16:
        case DType::kBF16:
        case DType::kQ5_0:
        case DType::kQ5_1:
        case DType::kQ4_K:
        case DType::kQ5_K:
        case DType::kQ6_K: fail(ErrorCode::kKernelFailure, "repack", "type has no interleaved form");
      }
    }
  }
}

const void* interleaved_tail_row(const Tensor& t, int64_t r) {
  const int64_t groups = t.rows / 8;
  return static_cast<const char*>(t.buf.host) + t.offset + static_cast<size_t>(groups) * t.group_stride +
         static_cast<size_t>(r - groups * 8) * t.row_stride;
}

void interleaved_row_to_f32(const Tensor& t, int64_t r, float* out) {
  const int64_t g = r / 8;
  const int lane = static_cast<int>(r % 8);
  const int64_t nb = t.cols / kQK;
  const auto* base = static_cast<const uint8_t*>(t.buf.host) + t.offset + static_cast<size_t>(g) * t.group_stride;
  for (int64_t b = 0; b < nb; ++b) {
    float* o = out + b * kQK;
    switch (t.dtype) {
      case DType::kQ4_0:
      case DType::kQ4_1: {
        const bool q41 = t.dtype == DType::kQ4_1;
        const uint16_t* d =
            q41 ? reinterpret_cast<const BlockQ4_1x8*>(base)[b].d : reinterpret_cast<const BlockQ4_0x8*>(base)[b].d;
        const uint8_t* qs =
            q41 ? reinterpret_cast<const BlockQ4_1x8*>(base)[b].qs : reinterpret_cast<const BlockQ4_0x8*>(base)[b].qs;
        const float dv = fp16_to_f32(d[lane]);
        // Same arithmetic as the row-major dequantizers: d * (q - 8) and d * q + m.
        const float mv = q41 ? fp16_to_f32(reinterpret_cast<const BlockQ4_1x8*>(base)[b].m[lane]) : 0.f;
        const int bias = q41 ? 0 : 8;
        for (int j = 0; j < 4; ++j)
          for (int k = 0; k < 4; ++k) {
            const uint8_t byte = qs[4 * (8 * j + lane) + k];
            o[4 * j + k] = dv * static_cast<float>((byte & 0x0f) - bias) + mv;
            o[16 + 4 * j + k] = dv * static_cast<float>((byte >> 4) - bias) + mv;
          }
        break;
      }
      case DType::kQ8_0: {
        const auto& blk = reinterpret_cast<const BlockQ8_0x8*>(base)[b];
        const float dv = fp16_to_f32(blk.d[lane]);
        for (int j = 0; j < 8; ++j)
          for (int k = 0; k < 4; ++k)
            o[4 * j + k] = dv * static_cast<float>(static_cast<int>(blk.qs[4 * (8 * j + lane) + k]) - 128);
        break;
      }
      case DType::kF32:
      case DType::kF16:
      case DType::kBF16:
      case DType::kQ5_0:
      case DType::kQ5_1:
      case DType::kQ4_K:
      case DType::kQ5_K:
      case DType::kQ6_K: fail(ErrorCode::kKernelFailure, "repack", "type has no interleaved form");
    }
  }
}

}  // namespace metallic::cpu
