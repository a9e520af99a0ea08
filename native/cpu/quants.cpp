// Scalar reference kernels and the per-type traits table (see quants.h).
#include "cpu/quants.h"

#include <cmath>
#include <cstring>

#include "core/quant_blocks.h"

namespace metallic::cpu {

// ----------------------------------------------------------------------------- activations

void quantize_act_block_ref(const float* xb, int8_t* q, float* d, float* s) {
  float amax = 0.f;
  bool finite = true;
  for (int i = 0; i < kQK; ++i) {
    finite = finite && std::isfinite(xb[i]);
    amax = std::fmax(amax, std::fabs(xb[i]));
  }
  if (!finite || amax == 0.f) {
    std::memset(q, 0, kQK);
    *d = finite ? 0.f : std::nanf("");
    *s = 0.f;
    return;
  }
  const float scale = amax / 127.f;
  if (scale == 0.f) {  // amax < 127 * 2^-150: the scale underflows, the block is zero
    std::memset(q, 0, kQK);
    *d = 0.f;
    *s = 0.f;
    return;
  }
  const float inv = 127.f / amax;
  int32_t sum = 0;
  for (int i = 0; i < kQK; ++i) {
    // The common case multiplies by inv (what the SIMD path does); tiny blocks divide by d, whose
    // subnormal rounding can push |x / d| past 127, hence the clamp.
    const float r = amax >= kActMinAmax ? std::nearbyint(xb[i] * inv)
                                        : std::fmin(127.f, std::fmax(-127.f, std::nearbyint(xb[i] / scale)));
    const int32_t v = static_cast<int32_t>(r);
    q[i] = static_cast<int8_t>(v);
    sum += v;
  }
  *d = scale;
  *s = scale * static_cast<float>(sum);
}

void quantize_act_q8_ref(const float* x, int64_t n, int8_t* q, float* d, float* s) {
  for (int64_t b = 0; b < n / kQK; ++b) quantize_act_block_ref(x + b * kQK, q + b * kQK, d + b, s + b);
}

// ----------------------------------------------------------------------------- quantized dots

float dot_q8_0_q8_ref(int64_t n, const void* w, ActQ8 a) {
  const auto* blk = static_cast<const BlockQ8_0*>(w);
  float acc = 0.f;
  for (int64_t b = 0; b < n / kQK; ++b) {
    int32_t sum = 0;
    for (int i = 0; i < kQK; ++i) sum += blk[b].qs[i] * a.q[b * kQK + i];
    acc += fp16_to_f32(blk[b].d) * a.d[b] * static_cast<float>(sum);
  }
  return acc;
}

// Sum of nib[i] * q[i] over one 32-element block of packed nibbles.
static inline int32_t nibble_dot(const uint8_t* qs, const int8_t* q) {
  int32_t sum = 0;
  for (int i = 0; i < kQK / 2; ++i) {
    sum += (qs[i] & 0x0f) * q[i];
    sum += (qs[i] >> 4) * q[i + kQK / 2];
  }
  return sum;
}

float dot_q4_0_q8_ref(int64_t n, const void* w, ActQ8 a) {
  const auto* blk = static_cast<const BlockQ4_0*>(w);
  float acc = 0.f;
  for (int64_t b = 0; b < n / kQK; ++b) {
    const float dw = fp16_to_f32(blk[b].d);
    // sum((nib - 8) * q) * dw * da = dw * (da * sum(nib * q) - 8 * s)
    acc += dw * (a.d[b] * static_cast<float>(nibble_dot(blk[b].qs, a.q + b * kQK)) - 8.f * a.s[b]);
  }
  return acc;
}

float dot_q4_1_q8_ref(int64_t n, const void* w, ActQ8 a) {
  const auto* blk = static_cast<const BlockQ4_1*>(w);
  float acc = 0.f;
  for (int64_t b = 0; b < n / kQK; ++b) {
    const float dw = fp16_to_f32(blk[b].d);
    const float mw = fp16_to_f32(blk[b].m);
    acc += dw * a.d[b] * static_cast<float>(nibble_dot(blk[b].qs, a.q + b * kQK)) + mw * a.s[b];
  }
  return acc;
}

void dot_q8_0_q8_x4_ref(int64_t n, const void* w, const ActQ8* a, float* out) {
  for (int j = 0; j < 4; ++j) out[j] = dot_q8_0_q8_ref(n, w, a[j]);
}
void dot_q4_0_q8_x4_ref(int64_t n, const void* w, const ActQ8* a, float* out) {
  for (int j = 0; j < 4; ++j) out[j] = dot_q4_0_q8_ref(n, w, a[j]);
}
void dot_q4_1_q8_x4_ref(int64_t n, const void* w, const ActQ8* a, float* out) {
  for (int j = 0; j < 4; ++j) out[j] = dot_q4_1_q8_ref(n, w, a[j]);
}

// ----------------------------------------------------------------------------- float dots

float dot_f32_ref(int64_t n, const void* w, const float* x) {
  const auto* r = static_cast<const float*>(w);
  float acc = 0.f;
  for (int64_t i = 0; i < n; ++i) acc += r[i] * x[i];
  return acc;
}

float dot_f16_ref(int64_t n, const void* w, const float* x) {
  const auto* r = static_cast<const uint16_t*>(w);
  float acc = 0.f;
  for (int64_t i = 0; i < n; ++i) acc += fp16_to_f32(r[i]) * x[i];
  return acc;
}

float dot_bf16_ref(int64_t n, const void* w, const float* x) {
  const auto* r = static_cast<const uint16_t*>(w);
  float acc = 0.f;
  for (int64_t i = 0; i < n; ++i) acc += bf16_to_f32(r[i]) * x[i];
  return acc;
}

// ----------------------------------------------------------------------------- dequantize rows

void row_to_f32_q8_0(int64_t n, const void* w, float* out) {
  const auto* blk = static_cast<const BlockQ8_0*>(w);
  for (int64_t b = 0; b < n / kQK; ++b) {
    const float d = fp16_to_f32(blk[b].d);
    for (int i = 0; i < kQK; ++i) out[b * kQK + i] = d * blk[b].qs[i];
  }
}

void row_to_f32_q4_0(int64_t n, const void* w, float* out) {
  const auto* blk = static_cast<const BlockQ4_0*>(w);
  for (int64_t b = 0; b < n / kQK; ++b) {
    const float d = fp16_to_f32(blk[b].d);
    for (int i = 0; i < kQK / 2; ++i) {
      out[b * kQK + i] = d * static_cast<float>((blk[b].qs[i] & 0x0f) - 8);
      out[b * kQK + i + kQK / 2] = d * static_cast<float>((blk[b].qs[i] >> 4) - 8);
    }
  }
}

void row_to_f32_q4_1(int64_t n, const void* w, float* out) {
  const auto* blk = static_cast<const BlockQ4_1*>(w);
  for (int64_t b = 0; b < n / kQK; ++b) {
    const float d = fp16_to_f32(blk[b].d);
    const float m = fp16_to_f32(blk[b].m);
    for (int i = 0; i < kQK / 2; ++i) {
      out[b * kQK + i] = d * static_cast<float>(blk[b].qs[i] & 0x0f) + m;
      out[b * kQK + i + kQK / 2] = d * static_cast<float>(blk[b].qs[i] >> 4) + m;
    }
  }
}

void row_to_f32_f32(int64_t n, const void* w, float* out) {
  std::memcpy(out, w, static_cast<size_t>(n) * sizeof(float));
}

void row_to_f32_f16(int64_t n, const void* w, float* out) {
  const auto* r = static_cast<const uint16_t*>(w);
  for (int64_t i = 0; i < n; ++i) out[i] = fp16_to_f32(r[i]);
}

void row_to_f32_bf16(int64_t n, const void* w, float* out) {
  const auto* r = static_cast<const uint16_t*>(w);
  for (int64_t i = 0; i < n; ++i) out[i] = bf16_to_f32(r[i]);
}

void axpy_f32_ref(int64_t n, float a, const void* row, float* acc) {
  const auto* r = static_cast<const float*>(row);
  for (int64_t i = 0; i < n; ++i) acc[i] += a * r[i];
}

void axpy_f16_ref(int64_t n, float a, const void* row, float* acc) {
  const auto* r = static_cast<const uint16_t*>(row);
  for (int64_t i = 0; i < n; ++i) acc[i] += a * fp16_to_f32(r[i]);
}

void axpy_q8_0_ref(int64_t n, float a, const void* row, float* acc) {
  const auto* blk = static_cast<const BlockQ8_0*>(row);
  for (int64_t b = 0; b < n / kQK; ++b) {
    const float ad = a * fp16_to_f32(blk[b].d);
    float* o = acc + b * kQK;
    for (int i = 0; i < kQK; ++i) o[i] += ad * static_cast<float>(blk[b].qs[i]);
  }
}

void axpy_q4_0_ref(int64_t n, float a, const void* row, float* acc) {
  const auto* blk = static_cast<const BlockQ4_0*>(row);
  for (int64_t b = 0; b < n / kQK; ++b) {
    const float ad = a * fp16_to_f32(blk[b].d);
    float* o = acc + b * kQK;
    for (int i = 0; i < kQK / 2; ++i) {
      o[i] += ad * static_cast<float>((blk[b].qs[i] & 0x0f) - 8);
      o[i + kQK / 2] += ad * static_cast<float>((blk[b].qs[i] >> 4) - 8);
    }
  }
}

// ----------------------------------------------------------------------------- traits table

namespace {

CpuTypeTraits make_traits(DType t) {
  const bool simd = x86::available();
  switch (t) {
    case DType::kF32:
      return {t,
              false,
              nullptr,
              nullptr,
              simd ? x86::dot_f32 : dot_f32_ref,
              row_to_f32_f32,
              simd ? x86::axpy_f32 : axpy_f32_ref};
    case DType::kF16:
      return {t,
              false,
              nullptr,
              nullptr,
              simd ? x86::dot_f16 : dot_f16_ref,
              simd ? x86::row_to_f32_f16 : row_to_f32_f16,
              simd ? x86::axpy_f16 : axpy_f16_ref};
    case DType::kBF16:
      return {t, false, nullptr, nullptr, simd ? x86::dot_bf16 : dot_bf16_ref, row_to_f32_bf16, nullptr};
    case DType::kQ8_0:
      return {t,
              true,
              simd ? x86::dot_q8_0_q8 : dot_q8_0_q8_ref,
              simd ? x86::dot_q8_0_q8_x4 : dot_q8_0_q8_x4_ref,
              nullptr,
              row_to_f32_q8_0,
              simd ? x86::axpy_q8_0 : axpy_q8_0_ref};
    case DType::kQ4_0:
      return {t,
              true,
              simd ? x86::dot_q4_0_q8 : dot_q4_0_q8_ref,
              simd ? x86::dot_q4_0_q8_x4 : dot_q4_0_q8_x4_ref,
              nullptr,
              row_to_f32_q4_0,
              simd ? x86::axpy_q4_0 : axpy_q4_0_ref};
    case DType::kQ4_1:
      return {t,
              true,
              simd ? x86::dot_q4_1_q8 : dot_q4_1_q8_ref,
              simd ? x86::dot_q4_1_q8_x4 : dot_q4_1_q8_x4_ref,
              nullptr,
              row_to_f32_q4_1,
              nullptr};
    case DType::kQ5_0:
      return {t,
              true,
              simd ? x86::dot_q5_0_q8 : dot_q5_0_q8_ref,
              simd ? x86::dot_q5_0_q8_x4 : dot_q5_0_q8_x4_ref,
              nullptr,
              row_to_f32_q5_0,
              nullptr};
    case DType::kQ5_1:
      return {t,
              true,
              simd ? x86::dot_q5_1_q8 : dot_q5_1_q8_ref,
              simd ? x86::dot_q5_1_q8_x4 : dot_q5_1_q8_x4_ref,
              nullptr,
              row_to_f32_q5_1,
              nullptr};
    case DType::kQ4_K:
      return {t,
              true,
              simd ? x86::dot_q4_K_q8 : dot_q4_K_q8_ref,
              simd ? x86::dot_q4_K_q8_x4 : dot_q4_K_q8_x4_ref,
              nullptr,
              row_to_f32_q4_K,
              nullptr};
    case DType::kQ5_K:
      return {t,
              true,
              simd ? x86::dot_q5_K_q8 : dot_q5_K_q8_ref,
              simd ? x86::dot_q5_K_q8_x4 : dot_q5_K_q8_x4_ref,
              nullptr,
              row_to_f32_q5_K,
              nullptr};
    case DType::kQ6_K:
      return {t,
              true,
              simd ? x86::dot_q6_K_q8 : dot_q6_K_q8_ref,
              simd ? x86::dot_q6_K_q8_x4 : dot_q6_K_q8_x4_ref,
              nullptr,
              row_to_f32_q6_K,
              nullptr};
  }
  return {t, false, nullptr, nullptr, nullptr, nullptr, nullptr};
}

struct TraitsTable {
  CpuTypeTraits f32 = make_traits(DType::kF32), f16 = make_traits(DType::kF16), bf16 = make_traits(DType::kBF16),
                q8_0 = make_traits(DType::kQ8_0), q4_0 = make_traits(DType::kQ4_0), q4_1 = make_traits(DType::kQ4_1),
                q5_0 = make_traits(DType::kQ5_0), q5_1 = make_traits(DType::kQ5_1), q4_k = make_traits(DType::kQ4_K),
                q5_k = make_traits(DType::kQ5_K), q6_k = make_traits(DType::kQ6_K);
};

const TraitsTable& table() {
  static const TraitsTable t;
  return t;
}

}  // namespace

const CpuTypeTraits& cpu_traits(DType t) {
  const TraitsTable& tt = table();
  switch (t) {
    case DType::kF32: return tt.f32;
    case DType::kF16: return tt.f16;
    case DType::kBF16: return tt.bf16;
    case DType::kQ8_0: return tt.q8_0;
    case DType::kQ4_0: return tt.q4_0;
    case DType::kQ4_1: return tt.q4_1;
    case DType::kQ5_0: return tt.q5_0;
    case DType::kQ5_1: return tt.q5_1;
    case DType::kQ4_K: return tt.q4_k;
    case DType::kQ5_K: return tt.q5_k;
    case DType::kQ6_K: return tt.q6_k;
  }
  fail(ErrorCode::kUnsupportedDType, "cpu_traits", "no CPU kernels for this dtype");
}

QuantizeActFn quantize_act_fn() { return x86::available() ? x86::quantize_act_q8 : quantize_act_q8_ref; }

}  // namespace metallic::cpu
