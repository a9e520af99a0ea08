// BROKEN ON PURPOSE: the two halves of a simdgroup call different simd_* functions. The emulator
// reports both calls with their lines.
#include "defines.h"

kernel void divergent_simd(device const float* x [[buffer(0)]], device float* out [[buffer(1)]],
                           ushort lane [[thread_index_in_simdgroup]], uint tid [[thread_position_in_grid]]) {
  float v = x[tid];
  if (lane < 16) {
    v = simd_sum(v);  // SIMD-A
  } else {
    v = simd_max(v);  // SIMD-B
  }
  out[tid] = v;
}
