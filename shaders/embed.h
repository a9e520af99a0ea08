// Embedding lookup: out[t, i] = dequant(table[tokens[t], i]) * scale, from any weight format.
// One thread per element: grid = (ceil(cols / kElementwiseThreads), n_tokens). Token ids are
// validated by the host before the dispatch.
#pragma once

#include "args.h"
#include "quant.h"

namespace metallic {

template <typename W>
[[kernel]] void embed(device const uchar* table [[buffer(0)]], device const int* tokens [[buffer(1)]],
                      device float* out [[buffer(2)]], constant EmbedArgs& a [[buffer(3)]],
                      uint2 gid [[thread_position_in_grid]]) {
  if (gid.x >= a.cols) return;
  device const uchar* row = table + ulong(tokens[gid.y]) * a.row_bytes;
  const uint b = gid.x / uint(Fmt<W>::kElems), i = gid.x % uint(Fmt<W>::kElems);
  out[ulong(gid.y) * a.out_stride + gid.x] = Fmt<W>::get(row + ulong(b) * Fmt<W>::kBytes, i) * a.scale;
}

}  // namespace metallic
