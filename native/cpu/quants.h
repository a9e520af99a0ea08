// Row dot products and activation quantization for the CPU device.
//
// Quantized weights (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and the K-quants Q4_K, Q5_K, Q6_K) are multiplied against activations
// quantized per block of 32 to int8 ("q8a"): d = amax / 127, q = rint(x * 127 / amax) (round half to even), and s = d *
// sum(q) for the Q4 offset terms. This is the deliberate precision trade that lets the dots run in integer SIMD; tests
// measure its cost against the fp32 reference. Float weights (F32, F16, BF16) are multiplied against f32 activations.
//
// Every function has a scalar `_ref` version that is always compiled and tested; the selected
// version (SIMD where the build has it) is reached only through `cpu_traits(dtype)`.
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace metallic::cpu {

// A quantized activation vector of n elements (n % 32 == 0): q[n], d[n/32], s[n/32].
struct ActQ8 {
  const int8_t* q;
  const float* d;
  const float* s;
};

using QuantizeActFn = void (*)(const float* x, int64_t n, int8_t* q, float* d, float* s);
// Dot of one quantized weight row (n elements) with one q8a activation.
using DotQ8Fn = float (*)(int64_t n, const void* w, ActQ8 a);
// Dots of one quantized weight row with four q8a activations (prefill: unpack the row once).
using DotQ8x4Fn = void (*)(int64_t n, const void* w, const ActQ8* a, float* out);
// Dot of one float weight row (n elements) with f32 activations.
using DotF32Fn = float (*)(int64_t n, const void* w, const float* x);
// Dequantize one row of n elements to f32.
using RowToF32Fn = void (*)(int64_t n, const void* w, float* out);
// acc[i] += a * row[i] (attention's weighted sum over V rows). A quantized row (Q8_0, Q4_0: a
// quantized KV cache) is dequantized on the fly: per block acc[i] += (a * d) * code[i], codes
// converted to float exactly; one rounding more than a * value, a relative 2^-24.
using AxpyFn = void (*)(int64_t n, float a, const void* row, float* acc);

// Smallest amax for which 127 / amax is finite; blocks below it (and non-finite blocks) take the
// scalar path in quantize_act_block_ref.
constexpr float kActMinAmax = 3.7322e-37f;

// One block of 32 with every edge case defined: amax == 0 or amax / 127 underflowing to 0 → zero
// block; 0 < amax < kActMinAmax → q = clamp(rint(x / d), ±127) (127 / amax would overflow, and a
// subnormal d may round down); amax NaN or inf (a diverged model) → d = NaN,
// q = 0, so the garbage shows in the output instead of undefined float → int conversions.
void quantize_act_block_ref(const float* x, int8_t* q, float* d, float* s);

struct CpuTypeTraits {
  DType type;
  bool act_q8;          // true: use dot_q8 with quantized activations; false: dot_f32
  DotQ8Fn dot_q8;       // null unless act_q8
  DotQ8x4Fn dot_q8_x4;  // null unless act_q8
  DotF32Fn dot_f32;     // null if act_q8
  RowToF32Fn to_f32;    // always set
  AxpyFn axpy;          // the KV-cache types (F32, F16, Q8_0, Q4_0), else null
};

const CpuTypeTraits& cpu_traits(DType t);
QuantizeActFn quantize_act_fn();

// Scalar references (always compiled; the tests call them through the bindings).
void quantize_act_q8_ref(const float* x, int64_t n, int8_t* q, float* d, float* s);
float dot_q8_0_q8_ref(int64_t n, const void* w, ActQ8 a);
float dot_q4_0_q8_ref(int64_t n, const void* w, ActQ8 a);
float dot_q4_1_q8_ref(int64_t n, const void* w, ActQ8 a);
void dot_q8_0_q8_x4_ref(int64_t n, const void* w, const ActQ8* a, float* out);
void dot_q4_0_q8_x4_ref(int64_t n, const void* w, const ActQ8* a, float* out);
void dot_q4_1_q8_x4_ref(int64_t n, const void* w, const ActQ8* a, float* out);
float dot_f32_ref(int64_t n, const void* w, const float* x);
float dot_f16_ref(int64_t n, const void* w, const float* x);
float dot_bf16_ref(int64_t n, const void* w, const float* x);
void row_to_f32_q8_0(int64_t n, const void* w, float* out);
void row_to_f32_q4_0(int64_t n, const void* w, float* out);
void row_to_f32_q4_1(int64_t n, const void* w, float* out);
void row_to_f32_f32(int64_t n, const void* w, float* out);
void row_to_f32_f16(int64_t n, const void* w, float* out);
void row_to_f32_bf16(int64_t n, const void* w, float* out);
void axpy_f32_ref(int64_t n, float a, const void* row, float* acc);
void axpy_f16_ref(int64_t n, float a, const void* row, float* acc);
void axpy_q8_0_ref(int64_t n, float a, const void* row, float* acc);
void axpy_q4_0_ref(int64_t n, float a, const void* row, float* acc);

// Q5_0, Q5_1 and the K-quants (cpu/quants_k.cpp). K-quant sub-blocks are 32 wide (Q6_K: two
// groups of 16 sharing one activation block), so every term pairs with one q8a block:
// Q4_K/Q5_K add d*sc*da*sum(u*q) - dmin*m*s per sub-block, Q6_K d*sc*da*sum((u - 32)*q) per group.
float dot_q5_0_q8_ref(int64_t n, const void* w, ActQ8 a);
float dot_q5_1_q8_ref(int64_t n, const void* w, ActQ8 a);
float dot_q4_K_q8_ref(int64_t n, const void* w, ActQ8 a);
float dot_q5_K_q8_ref(int64_t n, const void* w, ActQ8 a);
float dot_q6_K_q8_ref(int64_t n, const void* w, ActQ8 a);
void dot_q5_0_q8_x4_ref(int64_t n, const void* w, const ActQ8* a, float* out);
void dot_q5_1_q8_x4_ref(int64_t n, const void* w, const ActQ8* a, float* out);
void dot_q4_K_q8_x4_ref(int64_t n, const void* w, const ActQ8* a, float* out);
void dot_q5_K_q8_x4_ref(int64_t n, const void* w, const ActQ8* a, float* out);
void dot_q6_K_q8_x4_ref(int64_t n, const void* w, const ActQ8* a, float* out);
void row_to_f32_q5_0(int64_t n, const void* w, float* out);
void row_to_f32_q5_1(int64_t n, const void* w, float* out);
void row_to_f32_q4_K(int64_t n, const void* w, float* out);
void row_to_f32_q5_K(int64_t n, const void* w, float* out);
void row_to_f32_q6_K(int64_t n, const void* w, float* out);
// The 6-bit scales and mins of a Q4_K/Q5_K super-block (layout in core/quant_blocks.h).
void unpack_k4_scales(const uint8_t* packed, uint8_t* sc, uint8_t* m);

// SIMD versions (cpu/arch/x86.cpp); available() is false when the build has no AVX2.
namespace x86 {
bool available();
void quantize_act_q8(const float* x, int64_t n, int8_t* q, float* d, float* s);
float dot_q8_0_q8(int64_t n, const void* w, ActQ8 a);
float dot_q4_0_q8(int64_t n, const void* w, ActQ8 a);
float dot_q4_1_q8(int64_t n, const void* w, ActQ8 a);
void dot_q8_0_q8_x4(int64_t n, const void* w, const ActQ8* a, float* out);
void dot_q4_0_q8_x4(int64_t n, const void* w, const ActQ8* a, float* out);
void dot_q4_1_q8_x4(int64_t n, const void* w, const ActQ8* a, float* out);
float dot_f32(int64_t n, const void* w, const float* x);
float dot_f16(int64_t n, const void* w, const float* x);
void row_to_f32_f16(int64_t n, const void* w, float* out);  // exact, as the scalar conversion
float dot_bf16(int64_t n, const void* w, const float* x);
void axpy_f32(int64_t n, float a, const void* row, float* acc);
void axpy_f16(int64_t n, float a, const void* row, float* acc);
void axpy_q8_0(int64_t n, float a, const void* row, float* acc);
void axpy_q4_0(int64_t n, float a, const void* row, float* acc);
// cpu/arch/x86_k.cpp
float dot_q5_0_q8(int64_t n, const void* w, ActQ8 a);
float dot_q5_1_q8(int64_t n, const void* w, ActQ8 a);
float dot_q4_K_q8(int64_t n, const void* w, ActQ8 a);
float dot_q5_K_q8(int64_t n, const void* w, ActQ8 a);
float dot_q6_K_q8(int64_t n, const void* w, ActQ8 a);
void dot_q5_0_q8_x4(int64_t n, const void* w, const ActQ8* a, float* out);
void dot_q5_1_q8_x4(int64_t n, const void* w, const ActQ8* a, float* out);
void dot_q4_K_q8_x4(int64_t n, const void* w, const ActQ8* a, float* out);
void dot_q5_K_q8_x4(int64_t n, const void* w, const ActQ8* a, float* out);
void dot_q6_K_q8_x4(int64_t n, const void* w, const ActQ8* a, float* out);
}  // namespace x86

}  // namespace metallic::cpu
