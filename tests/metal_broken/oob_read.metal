// BROKEN ON PURPOSE: reads one element past the end of x (the bounds check uses <= instead of <).
// AddressSanitizer reports a heap-buffer-overflow at the marked line.
#include "defines.h"

kernel void oob_read(device const float* x [[buffer(0)]], device float* out [[buffer(1)]],
                     constant uint& n [[buffer(2)]], uint gid [[thread_position_in_grid]]) {
  if (gid <= n) out[gid % n] += x[gid];  // OOB-READ
}
