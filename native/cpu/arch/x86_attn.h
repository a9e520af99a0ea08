// Attention row kernels for several query heads that share one f16 K/V cache row (grouped-query
// attention): each cache row is loaded and converted once for all the heads of its group.
#pragma once

#include <cstdint>

namespace metallic::cpu {

struct F16HeadsFns {
  // out[h] = dot(row, q + h * q_stride) for h < nh; n % 16 == 0.
  void (*dot)(int64_t n, const void* row, const float* q, int64_t q_stride, int nh, float* out) = nullptr;
  // For positions j < n_pos in order: acc[h * n + i] += p[h * p_stride + j] * row_j[i] (one FMA
  // each), row_j = v + j * v_stride bytes, for h < nh, i < n; n % 16 == 0.
  void (*pv)(int64_t n, int64_t n_pos, const float* p, int64_t p_stride, int nh, const void* v, int64_t v_stride,
             float* acc) = nullptr;
};

// The AVX2 kernels, or null members in builds without AVX2 + FMA + F16C. A head's arithmetic
// (its FMA chains and their order) does not depend on nh, so one head alone and the same head
// within a group give bit-identical results (decode and prefill agree: batch invariance).
F16HeadsFns f16_heads_fns();

}  // namespace metallic::cpu
