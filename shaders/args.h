// Kernel argument structs, defined once for host code (gcc / clang, C++20) and shaders (MSL and
// the emulator). Each is bound as `constant XArgs& a [[buffer(i)]]`. All fields are 32-bit so
// the layout is the same everywhere; strides count elements, not bytes, unless named *_bytes.
// Grid constants the host needs for sizing live here too.
#pragma once

#ifdef __METAL_VERSION__
#include <metal_stdlib>  // shaders: uint32_t comes with the standard library, as in quant_blocks.h
#else
#include <cstdint>
#endif

namespace metallic {

// rms_norm: grid (n_rows); each threadgroup normalises one row.
struct RmsNormArgs {
  uint32_t n;           // row length
  uint32_t x_stride;    // elements between rows of x
  uint32_t out_stride;  // elements between rows of out
  float eps;
  uint32_t accumulate;  // 1: out += result (a post-norm's residual add)
  uint32_t pad0, pad1, pad2;
};

// gemv: grid (ceil(rows / kGemvRowsPerGroup), n_tokens), kGemvSimdgroups * 32 threads.
enum : uint32_t {
  kGemvSimdgroups = 2,
  kGemvRowsPerSimdgroup = 2,
  kGemvRowsPerGroup = kGemvSimdgroups * kGemvRowsPerSimdgroup,
};
struct GemvArgs {
  uint32_t rows;        // output features
  uint32_t cols;        // input features (a multiple of the weight's block)
  uint32_t row_bytes;   // bytes per weight row
  uint32_t x_stride;    // elements between tokens of x
  uint32_t out_stride;  // elements between tokens of out
  uint32_t accumulate;  // 1: out += result (residual add in the epilogue)
  uint32_t has_bias;    // 1: add bias[row]
  uint32_t pad0;
};

// rope_kv: grid (n_tokens), any threadgroup size.
struct RopeKvArgs {
  uint32_t n_head;
  uint32_t n_head_kv;
  uint32_t head_dim;
  uint32_t neox;         // 1: pairs (i, i + head_dim/2); 0: pairs (2i, 2i+1)
  uint32_t pos0;         // position of token 0
  uint32_t kv_capacity;  // cache rows per KV head
  uint32_t q_stride;     // elements between tokens of q (and of k, v below)
  uint32_t k_stride;
  uint32_t v_stride;
  uint32_t rope_dim;  // rotate the first rope_dim dims of each head (inv_freq: rope_dim / 2 values)
  float mscale;       // rotated values scaled by this (longrope's attention factor; 1: none)
  uint32_t pad0;
};

// attention_decode: grid (n_head, n_tokens), kAttnSimdgroups * 32 threads.
enum : uint32_t {
  kAttnSimdgroups = 4,
  kAttnMaxHeadDim = 256,
  kAttnMaxDimsPerLane = kAttnMaxHeadDim / 32,
};
struct AttnArgs {
  uint32_t n_head;
  uint32_t n_head_kv;
  uint32_t head_dim;  // <= kAttnMaxHeadDim
  uint32_t pos0;      // token t attends to cache positions 0 .. pos0 + t
  uint32_t kv_capacity;
  uint32_t q_stride;    // elements between tokens of q
  uint32_t out_stride;  // elements between tokens of out
  float scale;          // score scale, usually 1/sqrt(head_dim)
  uint32_t window;      // > 0: a query at position t sees positions t - window + 1 .. t
  float softcap;        // > 0: scores -> softcap * tanh(score / softcap)
};

// swiglu and embed: grid (ceil(cols / kElementwiseThreads), n_tokens).
enum : uint32_t { kElementwiseThreads = 256 };
struct SwiGluArgs {
  uint32_t cols;
  uint32_t gate_stride;
  uint32_t up_stride;
  uint32_t gelu;  // 1: GELU (tanh) gate, 0: SiLU
};
struct EmbedArgs {
  uint32_t cols;       // embedding width
  uint32_t row_bytes;  // bytes per table row
  uint32_t out_stride;
  float scale;
};

// gemv_norm and gemv_norm_swiglu (gemv_fused.h): RMSNorm fused into the GEMVs that read its
// output. grid (ceil(total rows / kFusedRowsPerGroup), n_tokens), kFusedSimdgroups * 32 threads;
// the normed row lives in threadgroup memory, so cols <= kFusedNormMaxCols (wider rows: the host
// runs rms_norm + gemv instead).
enum : uint32_t {
  kFusedSimdgroups = 4,
  kFusedRowsPerSimdgroup = 4,
  kFusedRowsPerGroup = kFusedSimdgroups * kFusedRowsPerSimdgroup,
  kFusedNormMaxCols = 6144,
};
// Up to three weights of one format sharing the normed x (q, k, v): global row r < rows0 is row
// r of w0, then rows1 rows of w1, then rows2 of w2 (0 rows: that weight is absent).
struct GemvNormArgs {
  uint32_t rows0, rows1, rows2;
  uint32_t cols;
  uint32_t row_bytes0, row_bytes1, row_bytes2;
  uint32_t x_stride;
  uint32_t out_stride0, out_stride1, out_stride2;
  uint32_t has_bias;  // bit i: add bias_i
  float eps;
  uint32_t pad0, pad1, pad2;
};
// out[t, r] = act(W_gate[r] . xn) * (W_up[r] . xn), xn = rmsnorm(x[t]) * norm_w, act SiLU or GELU.
struct GemvSwiGluArgs {
  uint32_t rows;
  uint32_t cols;
  uint32_t row_bytes_gate;
  uint32_t row_bytes_up;
  uint32_t x_stride;
  uint32_t out_stride;
  float eps;
  uint32_t gelu;  // as SwiGluArgs
};

// flash_attn (prefill attention): grid (n_head, ceil(n_tokens / kFlashTileQ)), kFlashThreads
// threads. Simdgroup s of a threadgroup owns kFlashQueriesPerSimdgroup consecutive queries; K/V
// tiles of kFlashTileKV cache rows are staged in threadgroup memory (as float: 16 KiB at head_dim
// 256). kFlashQueriesPerSimdgroup * kFlashTileKV must be 32 (one score per lane).
enum : uint32_t {
  kFlashSimdgroups = 4,
  kFlashQueriesPerSimdgroup = 4,
  kFlashTileQ = kFlashSimdgroups * kFlashQueriesPerSimdgroup,
  kFlashTileKV = 8,
  kFlashThreads = kFlashSimdgroups * 32,
};
struct FlashAttnArgs {
  uint32_t n_head;
  uint32_t n_head_kv;
  uint32_t head_dim;  // <= kAttnMaxHeadDim
  uint32_t pos0;      // token t attends to cache positions 0 .. pos0 + t
  uint32_t kv_capacity;
  uint32_t q_stride;    // elements between tokens of q
  uint32_t out_stride;  // elements between tokens of out
  uint32_t n_tokens;    // query tokens of this call (cache rows pos0 .. pos0 + n_tokens - 1 written)
  float scale;          // score scale, usually 1/sqrt(head_dim)
  uint32_t window;      // as AttnArgs
  float softcap;        // as AttnArgs
  uint32_t pad0;
};
// gemm (prefill, simdgroup_matrix tiles; gemm.h): same contract as gemv for n_tokens tokens at
// once. grid (ceil(rows / kGemmTileRows), ceil(n_tokens / kGemmTileTokens)), kGemmSimdgroups * 32
// threads; each threadgroup computes one kGemmTileTokens x kGemmTileRows tile of out, walking K
// in chunks of kGemmTileK columns.
enum : uint32_t {
  kGemmTileTokens = 32,
  kGemmTileRows = 64,
  kGemmTileK = 32,
  kGemmSimdgroups = 4,
};
struct GemmArgs {
  uint32_t rows;        // output features
  uint32_t cols;        // input features (a multiple of the weight's block)
  uint32_t row_bytes;   // bytes per weight row
  uint32_t x_stride;    // elements between tokens of x
  uint32_t out_stride;  // elements between tokens of out
  uint32_t n_tokens;    // tokens (rows of x and out)
  uint32_t accumulate;  // 1: out += result (residual add in the epilogue)
  uint32_t has_bias;    // 1: add bias[row]
};
// Device sampling (shaders/sample.h has the full contract): argmax_* (greedy, 2 dispatches) and
// sample_* (temperature + top-k / top-p / min-p, 2 or 3 dispatches) over one row of n logits,
// every kernel kSampleThreads threads, the partial passes one threadgroup per kSampleChunk logits.
// The host allocates one scratch buffer of ceil(n / kSampleChunk) * kSampleScratchWordsPerChunk
// 32-bit words once per vocabulary; the result is one uint: a token id, kSampleFallback (use the
// CPU sampler with the same uniform) or kSampleNoToken (no drawable token: the CPU sampler's
// "mask" error). top_k above kSampleMaxTopK (and below n) or n above kSampleMaxVocab: CPU sampler.
enum : uint32_t {
  kSampleThreads = 256,  // threads per threadgroup, every argmax_* / sample_* kernel
  kSampleSimdgroups = kSampleThreads / 32,
  kSampleChunk = 8192,  // logits per threadgroup of the partial passes
  kSamplePerThread = kSampleChunk / kSampleThreads,
  kSampleMaxTopK = 256,  // top_k cap; also the candidates of the top-p-only (nucleus) path
  kSampleMaxChunks = kSamplePerThread * kSampleThreads / kSampleMaxTopK,  // lists one merge holds
  kSampleMaxVocab = kSampleChunk * kSampleMaxChunks,
  kSampleScratchWordsPerChunk = 514,  // 2 + 2 * kSampleMaxTopK: max, mass, K keys, K ids
  kSampleNoToken = 0xFFFFFFFF,
  kSampleFallback = 0xFFFFFFFE,
};
struct SampleArgs {
  uint32_t n;      // logits in the row (n_vocab)
  uint32_t top_k;  // 0 or >= n: off; else <= kSampleMaxTopK
  float inv_temp;  // 1.f / temperature, divided in float as the CPU sampler does (temperature > 0)
  float top_p;     // (0, 1]; 1: off
  float min_p;     // [0, 1]; 0: off
  float u;         // the host RNG's uniform draw in [0, 1), rounded to float (1.0f: last token)
  uint32_t pad0, pad1;
};
// True when the row needs the sample_sums pass (the mass of every token): all but top-k mode.
inline bool sample_needs_sums(uint32_t n, uint32_t top_k) { return !(top_k > 0 && top_k < n); }

// softmax: grid (n_rows), any multiple of 32 threads up to 1024; one threadgroup per row.
struct SoftmaxArgs {
  uint32_t n;           // row length
  uint32_t x_stride;    // elements between rows of x
  uint32_t out_stride;  // elements between rows of out
  float scale;          // out = softmax(scale * x)
};

#ifndef __METAL_VERSION__
static_assert(sizeof(GemvNormArgs) == 64, "GemvNormArgs layout");
static_assert(sizeof(GemvSwiGluArgs) == 32, "GemvSwiGluArgs layout");
static_assert(sizeof(RmsNormArgs) == 32, "RmsNormArgs layout");
static_assert(sizeof(GemvArgs) == 32, "GemvArgs layout");
static_assert(sizeof(RopeKvArgs) == 48, "RopeKvArgs layout");
static_assert(sizeof(AttnArgs) == 40, "AttnArgs layout");
static_assert(sizeof(SwiGluArgs) == 16, "SwiGluArgs layout");
static_assert(sizeof(EmbedArgs) == 16, "EmbedArgs layout");
static_assert(sizeof(FlashAttnArgs) == 48, "FlashAttnArgs layout");
static_assert(sizeof(GemmArgs) == 32, "GemmArgs layout");
static_assert(sizeof(SampleArgs) == 32, "SampleArgs layout");
static_assert(sizeof(SoftmaxArgs) == 16, "SoftmaxArgs layout");
static_assert(kSampleScratchWordsPerChunk == 2 + 2 * kSampleMaxTopK, "sample scratch: max, sum, K keys, K ids");
static_assert(kSampleMaxChunks == 32 && kSampleMaxVocab == 262144, "sample: one merge threadgroup's reach");
#endif

}  // namespace metallic
