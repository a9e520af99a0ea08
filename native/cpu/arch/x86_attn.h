// Attention row kernels for several query heads that share one K/V cache row (grouped-query
// attention): each cache row is loaded and converted once for all the heads of its group.
// f16 caches (x86_attn.cpp, with the f16 cache's row store) and Q8_0 / Q4_0 caches (x86_attn_q.cpp).
#pragma once

#include <cstdint>

#include "core/dtype.h"
#include "cpu/quants.h"

namespace metallic::cpu {

struct F16HeadsFns {
  // out[h * out_stride + j] = dot(row_j, q + h * q_stride) for positions j < n_pos (row_j = rows
  // + j * row_stride bytes) and h < nh; n % 16 == 0. Per dot: one 8-lane FMA chain over the
  // 8-element chunks in order, then reduced horizontally (hsum's tree), whatever nh and n_pos.
  void (*dot)(int64_t n, int64_t n_pos, const void* rows, int64_t row_stride, const float* q, int64_t q_stride, int nh,
              float* out, int64_t out_stride) = nullptr;
  // For positions j < n_pos in order: acc[h * acc_stride + i] += p[h * p_stride + j] * row_j[i]
  // (one FMA each), row_j = v + j * v_stride bytes, for h < nh, i < n; n % 16 == 0. n may be a
  // slice of the rows (v and acc offset to it): each element's sum is the same either way.
  void (*pv)(int64_t n, int64_t n_pos, const float* p, int64_t p_stride, int nh, const void* v, int64_t v_stride,
             float* acc, int64_t acc_stride) = nullptr;
};

// The AVX2 kernels, or null members in builds without AVX2 + FMA + F16C. A head's arithmetic
// (its FMA chains and their order) does not depend on nh, so one head alone and the same head
// within a group give bit-identical results (decode and prefill agree: batch invariance).
F16HeadsFns f16_heads_fns();

// Query heads quantized to q8 blocks (cpu/quants.h ActQ8): head h's n codes at q + h * n, its
// n / 32 block scales and scale * sums at d + h * d_stride and s + h * d_stride.
struct QHeads {
  const int8_t* q;
  const float* d;
  const float* s;
  int64_t d_stride;
};

struct QuantHeadsFns {
  // out[h * out_stride + j] = dot(row_j, head h) for positions j < n_pos (row_j = rows + j *
  // row_stride bytes) and h < nh; n % 32 == 0. Each dot takes the float steps of the cache
  // type's cpu_traits().dot_q8 (x86::dot_q8_0_q8 / dot_q4_0_q8), bit for bit.
  void (*dot)(int64_t n, int64_t n_pos, const void* rows, int64_t row_stride, QHeads q, int nh, float* out,
              int64_t out_stride) = nullptr;
  // As F16HeadsFns::pv over quantized V rows: per element acc = fma(p * d, code, acc), positions
  // in order, which are the steps of cpu_traits().axpy with a = p, bit for bit; n % 32 == 0 (a
  // slice of whole blocks: v offset to its first block).
  void (*pv)(int64_t n, int64_t n_pos, const float* p, int64_t p_stride, int nh, const void* v, int64_t v_stride,
             float* acc, int64_t acc_stride) = nullptr;
};

// One head's attention weights in place: s[i] = softmax(softcap(scale * s[i])) for i < n >= 1
// (softcap(x) = softcap * tanh(x / softcap) when softcap > 0, else x). The maximum is exact;
// exp is x86_exp.h's exp8 and the sum of n terms is taken in an order fixed by n, so a head's
// weights do not depend on the batch or the thread. A NaN score makes every weight NaN. Null in
// builds without AVX2 + FMA (kernels.cpp then runs the same steps with std::exp).
using SoftmaxFn = void (*)(float* s, int64_t n, float scale, float softcap);
SoftmaxFn softmax_fn();

// A K or V row into an f16 cache: d[i] = x[i] rounded to nearest even for i < n / 8 * 8, eight at
// a time with F16C (vcvtps2ph); returns that count, and the caller (kernels.h f32_row_to_f16)
// converts the rest with core/dtype.h's f32_to_fp16. The same bits for every value but a NaN,
// which stays a NaN of its sign (F16C keeps its payload's top bits, f32_to_fp16 makes it 0x7e00).
// Null in builds without F16C.
using F32ToF16Fn = int64_t (*)(const float* x, int64_t n, uint16_t* d);
F32ToF16Fn f32_to_f16_fn();

// The AVX2 kernels of a Q8_0 or Q4_0 cache, or null members (other dtypes, builds without AVX2):
// the caller then runs cpu_traits(dtype).dot_q8 / axpy per row, the same arithmetic.
QuantHeadsFns quant_heads_fns(DType t);

}  // namespace metallic::cpu
