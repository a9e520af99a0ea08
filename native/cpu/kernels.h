// CPU implementations of the device ops (see core/device.h for slots and semantics).
//
// Each op takes the validated OpCall and the pool; shapes were checked when the plan was built,
// so the loops here are branch-free over rows. Work splits across threads by output rows
// (matmul), by (token, head) pairs (attention, RoPE) or by tokens (norms).
#pragma once

#include <cstdint>
#include <vector>

#include "core/device.h"
#include "cpu/amx.h"
#include "cpu/thread_pool.h"

namespace metallic::cpu {

// Per-device scratch reused across ops (grown at plan time, never in the token loop).
struct Scratch {
  std::vector<int8_t> act_q;  // (n_tokens, cols) quantized activations (AMX: round_up(n_tokens, 16) rows)
  std::vector<float> act_d;   // (n_tokens, cols/32) block scales
  std::vector<float> act_s;   // (n_tokens, cols/32) scale * sum(q)
  // The activations per 8-token tile (cpu/repack.h ActRows: block-major within a tile): the
  // scales for every multi-token call, the bytes for the interleaved kernels that read them.
  std::vector<int8_t> act_qt;  // (round_up(n_tokens, 8), cols)
  std::vector<float> act_dt;   // (round_up(n_tokens, 8), cols/32)
  std::vector<float> act_st;   // (round_up(n_tokens, 8), cols/32)
  std::vector<float> scores;   // (threads, scores_stride) attention scores and accumulators
  int64_t scores_stride = 0;   // max_group * (kv_capacity + head_dim) floats per thread
  int32_t max_group = 1;       // query heads per KV head the scores are sized for
  std::vector<float> rope_cs;  // (n_tokens, head_dim) cos | sin per position
  // A quantized K cache: each thread's query heads quantized to q8 blocks (threads, max_group,
  // head_dim), their block scales and scale * sums (threads, max_group, head_dim / 32 + 1).
  std::vector<int8_t> attn_q;
  std::vector<float> attn_qd, attn_qs;
  // One token's attention split over the threads (op_attention, long decode): every head's
  // scores (max_heads, kv_capacity) and, for a quantized K cache, every head as q8 blocks.
  int64_t split_bytes = int64_t{1} << 20;  // DeviceLimits::attn_split_bytes
  std::vector<float> split_scores;
  std::vector<int8_t> split_q;
  std::vector<float> split_qd, split_qs;
  // AMX tiles (cpu/amx.h): the fewest tokens of a call that runs on them (0: the device does not
  // use them), their backend, and each thread's scratch (amx_stride bytes, 64-byte aligned).
  int64_t amx_min_tokens = 0;
  AmxBackend amx_backend = AmxBackend::kHardware;
  std::vector<uint8_t> amx_scratch;
  size_t amx_stride = 0;
  uint8_t* amx_thread_scratch(int thread) {
    auto base = reinterpret_cast<uintptr_t>(amx_scratch.data());
    return amx_scratch.data() + ((base + 63) / 64 * 64 - base) + amx_stride * static_cast<size_t>(thread);
  }
};

// n floats to f16 bits, rounded to nearest even (cpu/arch/x86_attn.h's F16C kernel where built,
// else core/dtype.h's f32_to_fp16): how a K or V row enters an f16 cache.
void f32_row_to_f16(const float* x, int64_t n, uint16_t* d);

void op_embed(const OpCall& c, ThreadPool& pool);
void op_rms_norm(const OpCall& c, ThreadPool& pool);
void op_matmul(const OpCall& c, ThreadPool& pool, Scratch& s);
void op_rope_kv(const OpCall& c, ThreadPool& pool, Scratch& s);
void op_attention(const OpCall& c, ThreadPool& pool, Scratch& s);
void op_swiglu(const OpCall& c, ThreadPool& pool);

}  // namespace metallic::cpu
