// BROKEN ON PURPOSE: lane 0 sums the threadgroup's partials without waiting at a barrier for the
// other lanes to write them. The emulator's poisoned threadgroup memory and lane-order check
// expose it in-process; ThreadSanitizer reports the race at the marked lines.
#include "defines.h"

kernel void missing_barrier(device const float* x [[buffer(0)]], device float* out [[buffer(1)]],
                            uint tid [[thread_index_in_threadgroup]], uint n [[threads_per_threadgroup]]) {
  threadgroup float partial[64];
  partial[tid] = x[tid] * 2.f;  // RACE-WRITE
  // threadgroup_barrier(mem_flags::mem_threadgroup) belongs here
  if (tid == 0) {
    float s = 0.f;
    for (uint i = 0; i < n; ++i) s += partial[i];  // RACE-READ
    out[0] = s;
  }
}
