// BROKEN ON PURPOSE: lane 5 returns before the barrier the other lanes wait at (a hang or
// undefined behaviour on a GPU). The emulator reports the lane and the barrier's line.
#include "defines.h"

kernel void early_return(device const float* x [[buffer(0)]], device float* out [[buffer(1)]],
                         uint tid [[thread_index_in_threadgroup]], uint n [[threads_per_threadgroup]]) {
  threadgroup float partial[64];
  if (tid == 5) return;
  partial[tid] = x[tid];
  threadgroup_barrier(mem_flags::mem_threadgroup);  // BARRIER
  if (tid == 0) out[0] = partial[1];
}
