// The calls shader code makes into the emulator runtime (runtime.cpp): rendezvous points of the
// fiber scheduler and threadgroup storage. Included by the metal_stdlib shim; plain C++.
#pragma once

#include <cstddef>
#include <cstdint>
#include <source_location>

namespace emu {

enum class SimdOp : int32_t {
  kBarrier,
  kSum,
  kMax,
  kMin,
  kBroadcast,
  kShuffle,
  kShuffleDown,
  kShuffleXor,
  kBallot,
  // simdgroup_matrix operations (metal_stdlib)
  kMatrixFill,
  kMatrixLoad,
  kMatrixStore,
  kMatrixMultiply,
  kMatrixMultiplyAccumulate,
};

constexpr int kSimdWidth = 32;
constexpr size_t kSimdSlotBytes = 32;  // largest value a lane may pass to a simd_* call

// What a lane sees after a simd rendezvous: every lane's deposited value (slot i belongs to lane
// i of the simdgroup; only lanes in `active` are meaningful), and the caller's own lane.
struct SimdView {
  const unsigned char* slots;  // (kSimdWidth, kSimdSlotBytes)
  uint64_t active;             // bit i: lane i reached this call (lanes that returned are inactive)
  int lane;
};

// threadgroup_barrier: waits until every lane of the threadgroup arrives at the same call.
void barrier(std::source_location at);
// Deposits `bytes` (<= kSimdSlotBytes) of the lane's value and waits for the simdgroup's other
// active lanes to reach the same simd_* call.
SimdView simd_rendezvous(SimdOp op, const void* value, size_t bytes, std::source_location at);
// Stops the calling lane with a kernel failure (message names the .metal line); does not return.
[[noreturn]] void lane_fail(const char* what, std::source_location at);
// A threadgroup array of `bytes` at `p` (rewritten from `threadgroup T name[N];`): the first lane
// of each threadgroup to reach the declaration poisons it (0xFF bytes: NaN for floats).
void tg_declare(void* p, size_t bytes);

}  // namespace emu
