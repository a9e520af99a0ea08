#include "cpu/repack.h"

#include <cstring>
#include <type_traits>

#include "core/quant_blocks.h"
#include "cpu/quants.h"
#include "cpu/tile.h"

namespace metallic::cpu {

size_t interleaved_block_bytes(DType t) {
  switch (t) {
    case DType::kQ4_0: return sizeof(BlockQ4_0x8);
    case DType::kQ4_1: return sizeof(BlockQ4_1x8);
    case DType::kQ5_0: return sizeof(BlockQ5_0x8);
    case DType::kQ8_0: return sizeof(BlockQ8_0x8);
    case DType::kQ4_K: return sizeof(BlockQ4_Kx8);
    case DType::kQ5_1: return sizeof(BlockQ5_1x8);
    case DType::kQ5_K: return sizeof(BlockQ5_Kx8);
    case DType::kQ6_K: return sizeof(BlockQ6_Kx8);
    case DType::kF32:
    case DType::kF16:
    case DType::kBF16: return 0;
  }
  return 0;
}

void tile_token(int64_t t, int64_t cols, const int8_t* q, const float* d, const float* s, int8_t* qt, float* dt,
                float* st) {
  const int64_t nb = cols / kQK, t0 = t / kTile * kTile, j = t - t0;
  for (int64_t b = 0; b < nb; ++b) {
    if (qt != nullptr) std::memcpy(qt + t0 * cols + (b * kTile + j) * kQK, q + b * kQK, kQK);
    dt[t0 * nb + b * kTile + j] = d[b];
    st[t0 * nb + b * kTile + j] = s[b];
  }
}

namespace {

// Interleaves the 16 packed nibble bytes of 8 rows' blocks b into chunk order.
inline void interleave16(const uint8_t* const rows_qs[8], uint8_t* qs) {
  for (int j = 0; j < 4; ++j)
    for (int r = 0; r < 8; ++r) std::memcpy(qs + 4 * (8 * j + r), rows_qs[r] + 4 * j, 4);
}

// Block b of rows 8g..8g+7 of a Q5_0 / Q5_1 tensor into its x8 block.
template <typename Block, typename Out>
void repack_q5(const Tensor& src, int64_t g, int64_t b, Out* o) {
  const uint8_t* qs[8];
  uint32_t qh[8];
  for (int r = 0; r < 8; ++r) {
    const auto* blk = static_cast<const Block*>(src.row(8 * g + r)) + b;
    o->d[r] = blk->d;
    if constexpr (std::is_same_v<Block, BlockQ5_1>) o->m[r] = blk->m;
    qs[r] = blk->qs;
    std::memcpy(&qh[r], blk->qh, 4);
  }
  interleave16(qs, o->qs);
  for (int r = 0; r < 8; ++r)
    for (int k = 0; k < 4; ++k) {  // bits k, k + 4, .., k + 28 of qh[r] -> bits 0..7
      uint32_t x = (qh[r] >> k) & 0x11111111u;
      x = (x | x >> 3) & 0x03030303u;
      x = (x | x >> 6) & 0x000f000fu;
      o->qh[4 * r + k] = static_cast<uint8_t>(x | x >> 12);
    }
}

// Super-block b of rows 8g..8g+7 of a Q4_K / Q5_K tensor into its x8 block.
template <typename Block, typename Out>
void repack_k45(const Tensor& src, int64_t g, int64_t b, Out* o) {
  constexpr bool kQ5 = std::is_same_v<Block, BlockQ5_K>;
  if constexpr (kQ5) std::memset(o->qh, 0, sizeof(o->qh));
  for (int r = 0; r < 8; ++r) {
    const auto* blk = static_cast<const Block*>(src.row(8 * g + r)) + b;
    o->d[r] = blk->d;
    o->dmin[r] = blk->dmin;
    uint8_t sc[8], m[8];
    unpack_k4_scales(blk->scales, sc, m);
    for (int j = 0; j < 8; ++j) {
      o->sc[j][r] = sc[j];
      o->m[j][r] = m[j];
    }
    for (int p = 0; p < 4; ++p)
      for (int c = 0; c < 8; ++c) {
        std::memcpy(o->qs + 256 * p + 32 * c + 4 * r, blk->qs + 32 * p + 4 * c, 4);
        if constexpr (kQ5)
          for (int h = 0; h < 2; ++h)
            for (int k = 0; k < 4; ++k)
              o->qh[p][h][4 * r + k] |= static_cast<uint8_t>(((blk->qh[4 * c + k] >> (2 * p + h)) & 1) << c);
      }
  }
}

// Row `lane` of an x8 Q5_0 / Q5_1 block: d * (q - 16) / d * q + m, as the row-major dequantizers.
template <typename Blk>
void dequant_q5(const Blk& blk, int lane, float* o) {
  const float dv = fp16_to_f32(blk.d[lane]);
  for (int c = 0; c < 8; ++c)
    for (int k = 0; k < 4; ++k) {
      const uint8_t byte = blk.qs[4 * (8 * (c % 4) + lane) + k];
      const int code = (c < 4 ? byte & 0x0f : byte >> 4) | ((blk.qh[4 * lane + k] >> c) & 1) << 4;
      if constexpr (std::is_same_v<Blk, BlockQ5_1x8>) {
        o[4 * c + k] = dv * static_cast<float>(code) + fp16_to_f32(blk.m[lane]);
      } else {
        o[4 * c + k] = dv * static_cast<float>(code - 16);
      }
    }
}

// Row `lane` of an x8 Q4_K / Q5_K super-block: d * sc * q - dmin * m, as the row-major
// dequantizer.
template <typename Blk>
void dequant_k45(const Blk& blk, int lane, float* o) {
  const float d = fp16_to_f32(blk.d[lane]), dmin = fp16_to_f32(blk.dmin[lane]);
  for (int j = 0; j < 8; ++j) {
    const float dj = d * static_cast<float>(blk.sc[j][lane]), mj = dmin * static_cast<float>(blk.m[j][lane]);
    for (int l = 0; l < 32; ++l) {
      int code = (blk.qs[256 * (j / 2) + 32 * (l / 4) + 4 * lane + l % 4] >> (4 * (j % 2))) & 0x0f;
      if constexpr (std::is_same_v<Blk, BlockQ5_Kx8>)
        code |= ((blk.qh[j / 2][j % 2][4 * lane + l % 4] >> (l / 4)) & 1) << 4;
      o[32 * j + l] = dj * static_cast<float>(code) - mj;
    }
  }
}

}  // namespace

void repack_groups(const Tensor& src, const Tensor& dst, int64_t g0, int64_t g1) {
  const int64_t nb = src.cols / dtype_info(src.dtype).block_elems;
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
        case DType::kQ5_0: repack_q5<BlockQ5_0>(src, g, b, reinterpret_cast<BlockQ5_0x8*>(out) + b); break;
        case DType::kQ5_1: repack_q5<BlockQ5_1>(src, g, b, reinterpret_cast<BlockQ5_1x8*>(out) + b); break;
        case DType::kQ4_K: repack_k45<BlockQ4_K>(src, g, b, reinterpret_cast<BlockQ4_Kx8*>(out) + b); break;
        case DType::kQ5_K: repack_k45<BlockQ5_K>(src, g, b, reinterpret_cast<BlockQ5_Kx8*>(out) + b); break;
        case DType::kQ6_K: {
          auto* o = reinterpret_cast<BlockQ6_Kx8*>(out) + b;
          for (int r = 0; r < 8; ++r) {
            const auto* blk = static_cast<const BlockQ6_K*>(src.row(8 * g + r)) + b;
            o->d[r] = blk->d;
            for (int j = 0; j < 16; ++j) o->sc[j][r] = blk->scales[j];
            for (int c = 0; c < 8; ++c) {
              for (int hq = 0; hq < 4; ++hq) std::memcpy(&o->ql[hq][32 * c + 4 * r], blk->ql + 32 * hq + 4 * c, 4);
              for (int h = 0; h < 2; ++h) std::memcpy(&o->qh[h][32 * c + 4 * r], blk->qh + 32 * h + 4 * c, 4);
            }
          }
          break;
        }
        case DType::kQ8_0: {
          auto* o = reinterpret_cast<BlockQ8_0x8*>(out) + b;
          for (int r = 0; r < 8; ++r) {
            const auto* blk = static_cast<const BlockQ8_0*>(src.row(8 * g + r)) + b;
            o->d[r] = blk->d;
            for (int j = 0; j < 8; ++j)
              for (int k = 0; k < 4; ++k)
                o->qs[4 * (8 * j + r) + k] = static_cast<uint8_t>(static_cast<int>(blk->qs[4 * j + k]) + kQ8x8Bias);
          }
          break;
        }
        case DType::kF32:
        case DType::kF16:
        case DType::kBF16: fail(ErrorCode::kKernelFailure, "repack", "type has no interleaved form");
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
  const int64_t be = dtype_info(t.dtype).block_elems;
  const int64_t nb = t.cols / be;
  const auto* base = static_cast<const uint8_t*>(t.buf.host) + t.offset + static_cast<size_t>(g) * t.group_stride;
  for (int64_t b = 0; b < nb; ++b) {
    float* o = out + b * be;
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
      case DType::kQ5_0: dequant_q5(reinterpret_cast<const BlockQ5_0x8*>(base)[b], lane, o); break;
      case DType::kQ5_1: dequant_q5(reinterpret_cast<const BlockQ5_1x8*>(base)[b], lane, o); break;
      case DType::kQ4_K: dequant_k45(reinterpret_cast<const BlockQ4_Kx8*>(base)[b], lane, o); break;
      case DType::kQ5_K: dequant_k45(reinterpret_cast<const BlockQ5_Kx8*>(base)[b], lane, o); break;
      case DType::kQ6_K: {  // d * sc * (q - 32), as the row-major dequantizer
        const auto& blk = reinterpret_cast<const BlockQ6_Kx8*>(base)[b];
        const float d = fp16_to_f32(blk.d[lane]);
        for (int v = 0; v < kQK_K; ++v) {
          const int h = v / 128, t = (v % 128) / 32, l = v % 32;
          const int at = 32 * (l / 4) + 4 * lane + l % 4;
          const int lo = (blk.ql[2 * h + t % 2][at] >> (4 * (t / 2))) & 0x0f;
          const int hi = (blk.qh[h][at] >> (2 * t)) & 3;
          o[v] = d * static_cast<float>(blk.sc[v / 16][lane]) * static_cast<float>((lo | hi << 4) - 32);
        }
        break;
      }
      case DType::kQ8_0: {
        const auto& blk = reinterpret_cast<const BlockQ8_0x8*>(base)[b];
        const float dv = fp16_to_f32(blk.d[lane]);
        for (int j = 0; j < 8; ++j)
          for (int k = 0; k < 4; ++k)
            o[4 * j + k] = dv * static_cast<float>(q8x8_value(blk.qs[4 * (8 * j + lane) + k]));
        break;
      }
      case DType::kF32:
      case DType::kF16:
      case DType::kBF16: fail(ErrorCode::kKernelFailure, "repack", "type has no interleaved form");
    }
  }
}

}  // namespace metallic::cpu
