// BROKEN ON PURPOSE: half of a simdgroup waits in simd_sum while the other half waits at a
// threadgroup barrier. The emulator reports the divergent control flow.
#include "defines.h"

kernel void simd_vs_barrier(device const float* x [[buffer(0)]], device float* out [[buffer(1)]],
                            ushort lane [[thread_index_in_simdgroup]], uint tid [[thread_position_in_grid]]) {
  float v = x[tid];
  if (lane < 16) {
    v = simd_sum(v);  // SIMD
  } else {
    threadgroup_barrier(mem_flags::mem_threadgroup);  // BARRIER
  }
  out[tid] = v;
}
