// Load-time weight quantization (F32 / F16 / BF16 rows → Q8_0 or Q4_0 blocks), for
// `metallic.load(hf_folder, quantize=...)`. Rounding follows the GGML reference quantizers, so a
// file quantized here holds the same bytes as one quantized by llama.cpp's reference code:
//   Q8_0: d = amax / 127, q = roundf(x / d)           (half away from zero)
//   Q4_0: d = m / -8 (m: the element of largest |x|, first on ties), q = min(15, trunc(x / d + 8.5))
// with 1/d computed once per block in float32, and d stored as fp16 (round to nearest even).
// A block whose 1/d overflows (|d| tiny: it is 0 in fp16 too) takes 1/d = 0, which keeps every
// code in range instead of the reference's undefined float → int conversion of inf / NaN.
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace metallic::cpu {

// Quantizes `rows` rows of `cols` elements (cols % 32 == 0) from `src` (type `from`) into `dst`
// (type `to`). Throws CorruptFile naming `what` on a non-finite weight; UnsupportedDType for a
// (from, to) pair other than {F32, F16, BF16} → {Q8_0, Q4_0}.
void quantize_rows(DType from, const void* src, DType to, void* dst, int64_t row0, int64_t row1, int64_t cols,
                   const char* what);

// One f32 row of n elements (n % 32 == 0) into Q8_0 or Q4_0 blocks with the same rounding: the
// quantized KV cache's rows as rope_kv writes them. Never throws (it runs inside the thread pool's
// workers): a block holding a NaN or an infinity (a diverged model) is stored with d = NaN and
// zero codes, so its values read back as NaN and the garbage shows in the output, as it would
// with a float cache. `to` must be Q8_0 or Q4_0 (the caller dispatches; anything else: no-op).
void quantize_row_f32(DType to, const float* x, int64_t n, void* dst);

}  // namespace metallic::cpu
