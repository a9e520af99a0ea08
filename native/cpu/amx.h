// AMX-INT8 tiles for prefill matmuls over the 8-row interleaved weights (cpu/repack.h).
//
// Sapphire Rapids and later Xeons multiply a 16 x 32-byte tile of activations by a 32-byte x 16
// tile of weights into 16 x 16 int32 sums in one instruction (TDPBSUD: signed activations,
// unsigned codes; TDPBSSD for signed codes). Per block of 32 elements, a pair of 8-row groups
// (Q6_K: one group, its two 16-element halves side by side) is decoded once into such a weight
// tile for every token of the call; each tile of 16 tokens then takes one tile multiply per block
// and the float steps of the SIMD kernels (x86_x8.cpp) on the 16 x 16 sums: one convert, the
// rows' scales times the token's activation scale, one FMA, and the offset chain, in block order.
// The integer sums are exact and the float steps are the same, so every output is bit-identical
// to the SIMD path's: batch invariance and every test of that path carry over.
//
// The emulated backend runs the same kernels with the tile instructions done in portable C++
// (Intel's documented semantics), so the tiling, the decoding and the epilogue are tested on any
// machine; the hardware backend is compiled only where the build targets AMX-INT8 and used only
// where the CPU, the OS and Linux's per-process permission all allow it (amx_status()).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "core/dtype.h"
#include "cpu/repack.h"

namespace metallic::cpu {

// Whether this process can run the hardware tiles: the build has the kernels (compiled for
// AMX-TILE and AMX-INT8), the CPU reports both, the OS enables tile state (XCR0 bits 17, 18),
// and Linux granted XTILEDATA (arch_prctl(ARCH_REQ_XCOMP_PERM), asked once per process).
// `reason` names the first check that failed ("" when usable).
struct AmxStatus {
  bool usable = false;
  std::string reason;
};
const AmxStatus& amx_status();

enum class AmxBackend { kHardware, kEmulated };

// Tokens from which the automatic choice (TileEngine::kAuto) runs a matmul on the tiles:
// below it the SIMD kernels' per-token work is as cheap as decoding a weight tile.
constexpr int64_t kAmxMinTokens = 16;

// Tokens per tile; the activation buffer must be readable for round_up(nt, kAmxTokens) rows.
constexpr int64_t kAmxTokens = 16;

// Per-thread scratch bytes of the tile kernels for rows of `cols` elements (one unit's decoded
// weight tiles, scales and offsets).
size_t amx_scratch_bytes(int64_t cols);

// out[t * out_stride + 8g + i] (+)= dot(row 8g + i, token t) for the groups [g0, g1) of one
// repacked weight (group g at groups + g * group_stride) and the a.nt tokens of `a`. a.q must be
// readable for round_up(a.nt, kAmxTokens) token rows (the rows past a.nt are loaded and their
// sums ignored). scratch: amx_scratch_bytes(cols) bytes, 64-byte aligned, this thread's own.
using AmxGroupsFn = void (*)(int64_t cols, const char* groups, size_t group_stride, int64_t g0, int64_t g1,
                             const ActRows& a, float* out, int64_t out_stride, bool accumulate, void* scratch);

// The tile kernel of a weight type for a backend, or null (the type has no interleaved form, the
// build has no AVX2, or kHardware in a build without AMX-INT8).
AmxGroupsFn amx_groups_fn(DType t, AmxBackend backend);

}  // namespace metallic::cpu
