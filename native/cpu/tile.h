// Eight-token tiles for prefill matmuls with quantized weights.
//
// A tile kernel decodes each weight block once and multiplies it with the same block of eight
// activation rows; the eight int32 partial-sum vectors are reduced horizontally into one vector
// (one lane per token), so the block's scale product and the Q4 offset term cost one FMA each
// for all eight tokens instead of per token. Activation scales are stored transposed per tile,
// [block][token], so one vector load gives a block's eight token scales.
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace metallic::cpu {

constexpr int kTile = 8;

struct ActTile8 {
  const int8_t* q;   // token t's row of quantized activations starts at q + t * q_stride
  int64_t q_stride;  // bytes between token rows (= cols)
  const float* d8;   // (n / 32, 8) block scales, [block][token]
  const float* s8;   // (n / 32, 8) d * sum(q), [block][token]
};

// out[t] = dot(W row, activation t) for the 8 tokens of the tile; n % 32 == 0.
using DotQ8x8Fn = void (*)(int64_t n, const void* w, const ActTile8& a, float* out);

// The tile kernel for a weight type, or null (callers fall back to the 4-token kernels).
DotQ8x8Fn dot_q8_x8_fn(DType t);

}  // namespace metallic::cpu
