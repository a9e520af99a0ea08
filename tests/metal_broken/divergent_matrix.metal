// BROKEN ON PURPOSE: simdgroup_matrix operations outside simdgroup-uniform control flow (undefined
// behaviour on a GPU). The emulator reports each as a kernel failure naming the .metal line(s).
#include "defines.h"

// The two halves of the simdgroup multiply at different lines.
kernel void divergent_matrix(device const float* x [[buffer(0)]], device float* out [[buffer(1)]],
                             ushort lane [[thread_index_in_simdgroup]]) {
  simdgroup_float8x8 a, b;
  simdgroup_load(a, x, 8);
  simdgroup_load(b, x + 64, 8);
  simdgroup_float8x8 c = make_filled_simdgroup_matrix<float, 8, 8>(0.f);
  if (lane < 16) {
    simdgroup_multiply_accumulate(c, a, b, c);  // MMA-A
  } else {
    simdgroup_multiply_accumulate(c, b, a, c);  // MMA-B
  }
  simdgroup_store(c, out, 8);
}

// Half of the simdgroup returns before a matrix load: the others load without them.
kernel void matrix_missing_lanes(device const float* x [[buffer(0)]], device float* out [[buffer(1)]],
                                 ushort lane [[thread_index_in_simdgroup]]) {
  if (lane >= 16) return;
  simdgroup_float8x8 a;
  simdgroup_load(a, x, 8);  // PARTIAL
  simdgroup_store(a, out, 8);
}

// Each lane passes its own pointer to a collective load.
kernel void matrix_nonuniform_pointer(device const float* x [[buffer(0)]], device float* out [[buffer(1)]],
                                      ushort lane [[thread_index_in_simdgroup]]) {
  simdgroup_float8x8 a;
  simdgroup_load(a, x + lane % 2, 8);  // NONUNIFORM
  simdgroup_store(a, out, 8);
}
