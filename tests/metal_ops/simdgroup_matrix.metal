// Not product kernels: each simdgroup_matrix operation of the emulator's metal_stdlib once, for
// tests/python/test_metal_emu_simdgroup_matrix.py to compare with NumPy. One simdgroup (32
// threads). src, hsrc: 16x16 row-major; out: seven regions (six 8x8 results, then one 16x16 area
// that a store with an origin writes into); hout: one 8x8 half result.
#include "defines.h"

kernel void sgm_ops(device const float* src [[buffer(0)]], device const half* hsrc [[buffer(1)]],
                    device float* out [[buffer(2)]], device half* hout [[buffer(3)]],
                    uint tid [[thread_index_in_threadgroup]]) {
  threadgroup float ts[256];
  for (uint i = tid; i < 256; i += 32) ts[i] = src[i];
  threadgroup_barrier(mem_flags::mem_threadgroup);
  simdgroup_float8x8 m0, m1, m2, m3;
  simdgroup_load(m0, src, 16);                         // S[0:8, 0:8]
  simdgroup_load(m1, src, 16, ulong2(3, 5));           // S[5:13, 3:11]: origin = (column, row)
  simdgroup_load(m2, ts + 8, 16, ulong2(0, 0), true);  // S[0:8, 8:16]^T, from threadgroup memory
  simdgroup_store(m0, out, 8);
  simdgroup_store(m1, out + 64, 8);
  simdgroup_store(m2, out + 128, 8);
  simdgroup_store(m0, out + 192, 8, ulong2(0, 0), true);  // m0^T
  simdgroup_multiply(m3, m1, m2);
  simdgroup_store(m3, out + 256, 8);  // m1 m2
  simdgroup_float8x8 f = make_filled_simdgroup_matrix<float, 8, 8>(0.5f);
  simdgroup_multiply_accumulate(f, m0, m1, f);  // d aliases c: m0 m1 + 0.5
  simdgroup_store(f, out + 320, 8);
  simdgroup_store(m0, out + 384, 16, ulong2(8, 1));  // rows 1..8, columns 8..15 of a 16x16 area

  simdgroup_half8x8 h0, h1, h2;
  simdgroup_load(h0, hsrc, 16);
  simdgroup_load(h1, hsrc, 16, ulong2(8, 8));
  simdgroup_multiply_accumulate(h2, h0, h1, h0);  // H0 H1 + H0
  simdgroup_store(h2, hout, 8);
}

// A transposed load with a nonzero origin: the spec does not say which coordinates the origin
// counts in, so the emulator refuses it.
kernel void sgm_transposed_origin(device const float* src [[buffer(0)]], device float* out [[buffer(1)]]) {
  simdgroup_float8x8 m;
  simdgroup_load(m, src, 16, ulong2(1, 0), true);  // TRANSPOSED-ORIGIN
  simdgroup_store(m, out, 8);
}
