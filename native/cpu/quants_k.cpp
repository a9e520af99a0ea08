// Scalar references for Q5_0, Q5_1 and the K-quants Q4_K, Q5_K, Q6_K (see cpu/quants.h and the
// block layouts in core/quant_blocks.h): one integer code accessor per type, shared by the
// dequantizer and the dots, so the two read the bits the same way.
//
// Dots pair every 32-wide (sub-)block with one q8a activation block: the integer sum of
// code * q is exact, and each (sub-)block then adds one float term scaled by d_w * d_a, with
// the weight offset (min or -16 / -32) applied through s = d_a * sum(q) (or, for Q6_K's groups of
// 16, folded into the integer sum).
#include <cstring>
#include <type_traits>

#include "core/quant_blocks.h"
#include "cpu/quants.h"

namespace metallic::cpu {

namespace {

// ----------------------------------------------------------------------------- code accessors

inline uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// 5-bit code (0..31) of element i of a Q5_0/Q5_1 block.
inline int q5_code(const uint8_t* qs, uint32_t qh, int i) {
  const int nib = i < 16 ? (qs[i] & 0x0f) : (qs[i - 16] >> 4);
  return nib | static_cast<int>(((qh >> i) & 1u) << 4);
}

// 4-bit code of element l (0..31) of sub-block j of a Q4_K/Q5_K super-block.
inline int k4_nibble(const uint8_t* qs, int j, int l) { return (qs[32 * (j / 2) + l] >> (4 * (j % 2))) & 0x0f; }

// 6-bit code (0..63) of element v (0..255) of a Q6_K super-block.
inline int q6_code(const BlockQ6_K& b, int v) {
  const int h = v / 128, t = (v % 128) / 32, l = v % 32;
  const int lo = (b.ql[64 * h + 32 * (t % 2) + l] >> (4 * (t / 2))) & 0x0f;
  const int hi = (b.qh[32 * h + l] >> (2 * t)) & 3;
  return lo | hi << 4;
}

}  // namespace

void unpack_k4_scales(const uint8_t* p, uint8_t* sc, uint8_t* m) {
  for (int j = 0; j < 4; ++j) {
    sc[j] = p[j] & 0x3f;
    m[j] = p[j + 4] & 0x3f;
    sc[j + 4] = static_cast<uint8_t>((p[j + 8] & 0x0f) | ((p[j] >> 6) << 4));
    m[j + 4] = static_cast<uint8_t>((p[j + 8] >> 4) | ((p[j + 4] >> 6) << 4));
  }
}

// ----------------------------------------------------------------------------- Q5_0 / Q5_1

void row_to_f32_q5_0(int64_t n, const void* w, float* out) {
  const auto* blk = static_cast<const BlockQ5_0*>(w);
  for (int64_t b = 0; b < n / kQK; ++b) {
    const float d = fp16_to_f32(blk[b].d);
    const uint32_t qh = load_u32(blk[b].qh);
    for (int i = 0; i < kQK; ++i) out[b * kQK + i] = d * static_cast<float>(q5_code(blk[b].qs, qh, i) - 16);
  }
}

void row_to_f32_q5_1(int64_t n, const void* w, float* out) {
  const auto* blk = static_cast<const BlockQ5_1*>(w);
  for (int64_t b = 0; b < n / kQK; ++b) {
    const float d = fp16_to_f32(blk[b].d);
    const float m = fp16_to_f32(blk[b].m);
    const uint32_t qh = load_u32(blk[b].qh);
    for (int i = 0; i < kQK; ++i) out[b * kQK + i] = d * static_cast<float>(q5_code(blk[b].qs, qh, i)) + m;
  }
}

// Sum of code * q over one 32-element Q5 block.
static inline int32_t q5_dot(const uint8_t* qs, const uint8_t* qh_bytes, const int8_t* q) {
  const uint32_t qh = load_u32(qh_bytes);
  int32_t sum = 0;
  for (int i = 0; i < kQK; ++i) sum += q5_code(qs, qh, i) * q[i];
  return sum;
}

float dot_q5_0_q8_ref(int64_t n, const void* w, ActQ8 a) {
  const auto* blk = static_cast<const BlockQ5_0*>(w);
  float acc = 0.f;
  for (int64_t b = 0; b < n / kQK; ++b) {
    const float dw = fp16_to_f32(blk[b].d);
    // sum((code - 16) * q) * dw * da = dw * (da * sum(code * q) - 16 * s)
    const int32_t sum = q5_dot(blk[b].qs, blk[b].qh, a.q + b * kQK);
    acc += dw * (a.d[b] * static_cast<float>(sum) - 16.f * a.s[b]);
  }
  return acc;
}

float dot_q5_1_q8_ref(int64_t n, const void* w, ActQ8 a) {
  const auto* blk = static_cast<const BlockQ5_1*>(w);
  float acc = 0.f;
  for (int64_t b = 0; b < n / kQK; ++b) {
    const int32_t sum = q5_dot(blk[b].qs, blk[b].qh, a.q + b * kQK);
    acc += fp16_to_f32(blk[b].d) * a.d[b] * static_cast<float>(sum) + fp16_to_f32(blk[b].m) * a.s[b];
  }
  return acc;
}

// ----------------------------------------------------------------------------- Q4_K / Q5_K

// Code of element l of sub-block j: the nibble, plus (Q5_K) the high bit from qh.
template <typename Block>
inline int k_code(const Block& b, int j, int l) {
  if constexpr (std::is_same_v<Block, BlockQ5_K>) {
    return k4_nibble(b.qs, j, l) | (((b.qh[l] >> j) & 1) << 4);
  } else {
    return k4_nibble(b.qs, j, l);
  }
}

template <typename Block>
void row_to_f32_k(int64_t n, const void* w, float* out) {
  const auto* blk = static_cast<const Block*>(w);
  for (int64_t s = 0; s < n / kQK_K; ++s) {
    const float d = fp16_to_f32(blk[s].d), dmin = fp16_to_f32(blk[s].dmin);
    uint8_t sc[8], m[8];
    unpack_k4_scales(blk[s].scales, sc, m);
    for (int j = 0; j < 8; ++j) {
      const float dj = d * static_cast<float>(sc[j]), mj = dmin * static_cast<float>(m[j]);
      for (int l = 0; l < 32; ++l) out[s * kQK_K + 32 * j + l] = dj * static_cast<float>(k_code(blk[s], j, l)) - mj;
    }
  }
}

template <typename Block>
float dot_k_q8_ref(int64_t n, const void* w, ActQ8 a) {
  const auto* blk = static_cast<const Block*>(w);
  float acc = 0.f;
  for (int64_t s = 0; s < n / kQK_K; ++s) {
    const float d = fp16_to_f32(blk[s].d), dmin = fp16_to_f32(blk[s].dmin);
    uint8_t sc[8], m[8];
    unpack_k4_scales(blk[s].scales, sc, m);
    for (int j = 0; j < 8; ++j) {
      const int64_t ab = s * 8 + j;  // activation block
      int32_t sum = 0;
      for (int l = 0; l < 32; ++l) sum += k_code(blk[s], j, l) * a.q[ab * kQK + l];
      acc +=
          d * static_cast<float>(sc[j]) * a.d[ab] * static_cast<float>(sum) - dmin * static_cast<float>(m[j]) * a.s[ab];
    }
  }
  return acc;
}

void row_to_f32_q4_K(int64_t n, const void* w, float* out) { row_to_f32_k<BlockQ4_K>(n, w, out); }
void row_to_f32_q5_K(int64_t n, const void* w, float* out) { row_to_f32_k<BlockQ5_K>(n, w, out); }
float dot_q4_K_q8_ref(int64_t n, const void* w, ActQ8 a) { return dot_k_q8_ref<BlockQ4_K>(n, w, a); }
float dot_q5_K_q8_ref(int64_t n, const void* w, ActQ8 a) { return dot_k_q8_ref<BlockQ5_K>(n, w, a); }

// ----------------------------------------------------------------------------- Q6_K

void row_to_f32_q6_K(int64_t n, const void* w, float* out) {
  const auto* blk = static_cast<const BlockQ6_K*>(w);
  for (int64_t s = 0; s < n / kQK_K; ++s) {
    const float d = fp16_to_f32(blk[s].d);
    for (int v = 0; v < kQK_K; ++v)
      out[s * kQK_K + v] = d * static_cast<float>(blk[s].scales[v / 16]) * static_cast<float>(q6_code(blk[s], v) - 32);
  }
}

float dot_q6_K_q8_ref(int64_t n, const void* w, ActQ8 a) {
  const auto* blk = static_cast<const BlockQ6_K*>(w);
  float acc = 0.f;
  for (int64_t s = 0; s < n / kQK_K; ++s) {
    const float d = fp16_to_f32(blk[s].d);
    for (int g = 0; g < 16; ++g) {  // groups of 16; group g lies in activation block s * 8 + g / 2
      int32_t sum = 0;
      for (int l = 0; l < 16; ++l) sum += (q6_code(blk[s], 16 * g + l) - 32) * a.q[s * kQK_K + 16 * g + l];
      acc += d * static_cast<float>(blk[s].scales[g]) * a.d[s * 8 + g / 2] * static_cast<float>(sum);
    }
  }
  return acc;
}

// ----------------------------------------------------------------------------- four activations

void dot_q5_0_q8_x4_ref(int64_t n, const void* w, const ActQ8* a, float* out) {
  for (int j = 0; j < 4; ++j) out[j] = dot_q5_0_q8_ref(n, w, a[j]);
}
void dot_q5_1_q8_x4_ref(int64_t n, const void* w, const ActQ8* a, float* out) {
  for (int j = 0; j < 4; ++j) out[j] = dot_q5_1_q8_ref(n, w, a[j]);
}
void dot_q4_K_q8_x4_ref(int64_t n, const void* w, const ActQ8* a, float* out) {
  for (int j = 0; j < 4; ++j) out[j] = dot_q4_K_q8_ref(n, w, a[j]);
}
void dot_q5_K_q8_x4_ref(int64_t n, const void* w, const ActQ8* a, float* out) {
  for (int j = 0; j < 4; ++j) out[j] = dot_q5_K_q8_ref(n, w, a[j]);
}
void dot_q6_K_q8_x4_ref(int64_t n, const void* w, const ActQ8* a, float* out) {
  for (int j = 0; j < 4; ++j) out[j] = dot_q6_K_q8_ref(n, w, a[j]);
}

}  // namespace metallic::cpu
