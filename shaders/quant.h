// Weight formats as the kernels read them. Fmt<W> describes one "block" of W: kElems values in
// kBytes bytes (1 value for plain floats), `get` one value and `dot` a whole block with float
// activations (X: a device or threadgroup float pointer, so fused kernels can feed normed rows
// from threadgroup memory). Block layouts come from native/core/quant_blocks.h, shared with the host.
#pragma once

#include "core/quant_blocks.h"
#include "defines.h"

namespace metallic {

struct Bf16 {  // bfloat16 bits (upper half of a float)
  ushort bits;
};

template <typename W>
struct Fmt;

template <>
struct Fmt<float> {
  enum { kElems = 1, kBytes = 4 };
  static float get(device const uchar* b, uint) { return *(device const float*)b; }
  template <typename X>
  static float dot(device const uchar* b, X x) {
    return *(device const float*)b * x[0];
  }
};

template <>
struct Fmt<half> {
  enum { kElems = 1, kBytes = 2 };
  static float get(device const uchar* b, uint) { return float(*(device const half*)b); }
  template <typename X>
  static float dot(device const uchar* b, X x) {
    return float(*(device const half*)b) * x[0];
  }
};

template <>
struct Fmt<Bf16> {
  enum { kElems = 1, kBytes = 2 };
  static float get(device const uchar* b, uint) { return as_type<float>(uint(((device const Bf16*)b)->bits) << 16); }
  template <typename X>
  static float dot(device const uchar* b, X x) {
    return get(b, 0) * x[0];
  }
};

template <>
struct Fmt<BlockQ8_0> {
  enum { kElems = 32, kBytes = 34 };
  static float get(device const uchar* b, uint i) {
    device const BlockQ8_0* q = (device const BlockQ8_0*)b;
    return float(as_type<half>(q->d)) * float(q->qs[i]);
  }
  template <typename X>
  static float dot(device const uchar* b, X x) {
    device const BlockQ8_0* q = (device const BlockQ8_0*)b;
    float s = 0.f;
    for (int i = 0; i < 32; ++i) s += float(q->qs[i]) * x[i];
    return float(as_type<half>(q->d)) * s;
  }
};

template <>
struct Fmt<BlockQ4_0> {
  enum { kElems = 32, kBytes = 18 };
  static float get(device const uchar* b, uint i) {
    device const BlockQ4_0* q = (device const BlockQ4_0*)b;
    const int nib = i < 16 ? (q->qs[i] & 0xF) : (q->qs[i - 16] >> 4);
    return float(as_type<half>(q->d)) * float(nib - 8);
  }
  template <typename X>
  static float dot(device const uchar* b, X x) {
    device const BlockQ4_0* q = (device const BlockQ4_0*)b;
    float s = 0.f;
    for (int i = 0; i < 16; ++i) s += float(int(q->qs[i] & 0xF) - 8) * x[i] + float(int(q->qs[i] >> 4) - 8) * x[i + 16];
    return float(as_type<half>(q->d)) * s;
  }
};

template <>
struct Fmt<BlockQ4_1> {
  enum { kElems = 32, kBytes = 20 };
  static float get(device const uchar* b, uint i) {
    device const BlockQ4_1* q = (device const BlockQ4_1*)b;
    const int nib = i < 16 ? (q->qs[i] & 0xF) : (q->qs[i - 16] >> 4);
    return float(as_type<half>(q->d)) * float(nib) + float(as_type<half>(q->m));
  }
  template <typename X>
  static float dot(device const uchar* b, X x) {
    device const BlockQ4_1* q = (device const BlockQ4_1*)b;
    float s = 0.f, sx = 0.f;
    for (int i = 0; i < 16; ++i) {
      s += float(q->qs[i] & 0xF) * x[i] + float(q->qs[i] >> 4) * x[i + 16];
      sx += x[i] + x[i + 16];
    }
    return float(as_type<half>(q->d)) * s + float(as_type<half>(q->m)) * sx;
  }
};

}  // namespace metallic
#include "quant_k.h"  // Q5_0, Q5_1, Q4_K, Q5_K, Q6_K
