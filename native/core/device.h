// The one narrow interface every device implements: cpu, metal-emulated and metal (Apple).
//
// The decoder plan (native/model/) is written once against this interface: it allocates buffers,
// wraps the mmapped weights without copying, and issues a short list of named ops per layer.
// A device executes each op (CPU: immediately; Metal: encodes into the current command buffer)
// and `synchronize` waits for everything issued so far.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "core/dtype.h"

namespace metallic {

// A device allocation or a wrapped host range. `host` is the CPU-visible address (always valid
// for the CPU device and for unified-memory Metal); `handle` is the device's own object, if any.
struct Buffer {
  void* host = nullptr;
  size_t nbytes = 0;
  void* handle = nullptr;
};

// How a weight's rows are laid out in its buffer.
enum class Layout : int32_t {
  kRows,          // row r at offset + r * row_stride
  kInterleaved8,  // a device repack: groups of 8 rows interleaved block by block (group g at
                  // offset + g * group_stride), then the rows % 8 tail rows row-major
};

// A 2-D view (rows, cols) into a buffer; row r starts at offset + r * row_stride bytes (kRows).
struct Tensor {
  Buffer buf;
  size_t offset = 0;
  DType dtype = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  size_t row_stride = 0;  // bytes
  Layout layout = Layout::kRows;
  size_t group_stride = 0;  // kInterleaved8: bytes per group of 8 rows

  template <typename T>
  T* ptr() const {
    return reinterpret_cast<T*>(static_cast<char*>(buf.host) + offset);
  }
  const void* row(int64_t r) const {
    return static_cast<const char*>(buf.host) + offset + static_cast<size_t>(r) * row_stride;
  }
  bool valid() const { return buf.host != nullptr; }
};

enum class OpCode : int32_t {
  kEmbed,      // out[t] = dequant(table[tokens[t]]) * scale
  kRmsNorm,    // out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * w
  kMatMul,     // out_i[t] (+)= W_i x[t] (+ b_i), for up to 3 weights sharing x
  kRopeKv,     // rotate q and k in place by position, write k and v into the KV cache
  kAttention,  // causal GQA attention of q over the KV cache
  kSwiGlu,     // gate[t] = silu(gate[t]) * up[t]
  // Fusions (a device may run them as one kernel; decompose() below gives the unfused meaning):
  kNormMatMul,  // out_i[t] = W_i rmsnorm(x[t]) (+ b_i), up to 3 weights sharing the normed x
  kNormSwiGlu,  // out[t] = silu(W_gate xn) * (W_up xn), xn = rmsnorm(x[t])
  kArgmax,      // out = first index of the largest logit (greedy decoding ends on the device)
  kSample,      // out = the token the CPU sampler draws with temperature/top-k/top-p/min-p for uniform u
};

// Flat parameter block shared by every op (unused fields are ignored).
struct OpParams {
  int64_t n_tokens = 0;  // rows of the activations
  int64_t pos0 = 0;      // position of the first token
  int32_t n_head = 0;
  int32_t n_head_kv = 0;
  int32_t head_dim = 0;
  int32_t n_weights = 0;    // kMatMul: how many weights share the input (1..3)
  int64_t kv_capacity = 0;  // KV rows per head; position p lives in row p % kv_capacity (a ring when
                            // the layer has a window and fewer rows than the context: kv_positions_ok)
  float eps = 0.f;
  float scale = 1.f;        // kEmbed: embedding scale; kAttention: score scale
  bool accumulate = false;  // kMatMul: out += result (residual add in the epilogue)
                            // kNormMatMul, kNormSwiGlu: eps is the norm's epsilon
  bool neox = true;         // kRopeKv: rotate-halves pairing (else interleaved pairs)
                            // kRmsNorm: accumulate = out += norm(x) * w (a post-norm's residual add)
  int32_t window = 0;       // kAttention, kRopeKv: > 0, a query at position t sees keys t-window+1..t
  float softcap = 0.f;      // kAttention: > 0, scores -> softcap * tanh(score / softcap)
  bool gelu = false;        // kSwiGlu, kNormSwiGlu: GELU (tanh approximation) gate instead of SiLU
  int32_t rope_dim = 0;     // kRopeKv: rotate the first rope_dim dims of each head (0: head_dim)
  float rope_mscale = 1.f;  // kRopeKv: rotated values scaled by this (longrope attention factor)
  // kSample: scale = 1 / temperature; top_k (0: off), top_p, min_p and the uniform draw u.
  int32_t top_k = 0;
  float top_p = 1.f;
  float min_p = 0.f;
  float uniform = 0.f;
  // kRopeKv, kAttention as a ragged batch (continuous batching) when n_seqs > 0: the token table
  // (slot [6] of kRopeKv, [4] of kAttention) gives each token's (slot, position), and slot s's
  // K/V cache is the cache view moved by s * kv_seq_stride bytes (s < n_seqs); pos0 is unused.
  // A slot's tokens are contiguous with consecutive positions (a run), and every run fits its
  // cache as kv_positions_ok asks of a plain call. for_each_run() walks and checks the runs.
  int32_t n_seqs = 0;
  size_t kv_seq_stride = 0;
};

// kRopeKv / kAttention positions fit the cache: either every position of the batch has its own row
// (pos0 + n_tokens <= kv_capacity) or the layer is a sliding-window ring that holds the batch and
// the window before its first query (window + n_tokens - 1 <= kv_capacity), so no row the batch
// reads is overwritten by a row it writes.
inline bool kv_positions_ok(const OpParams& p) {
  return p.pos0 >= 0 && p.n_tokens >= 1 && p.kv_capacity >= 1 &&
         (p.pos0 + p.n_tokens <= p.kv_capacity || (p.window > 0 && p.window + p.n_tokens - 1 <= p.kv_capacity));
}

// Tensor slots per op (see the kernels for the exact roles):
//   kEmbed:     [0]=table (vocab, d)  [1]=tokens (1, n) int32 as F32-sized  [2]=out (n, d)
//   kRmsNorm:   [0]=x  [1]=w (1, d) F32  [2]=out
//   kMatMul:    [0]=x  [1..3]=W_i  [4..6]=bias_i (optional)  [7..9]=out_i  [10]=scratch
//   kRopeKv:    [0]=q  [1]=k  [2]=v  [3]=K cache  [4]=V cache  [5]=inv_freq (1, head_dim/2)
//               [6]=token table (n, 2) int32 (ragged: OpParams::n_seqs)
//   kAttention: [0]=q  [1]=K cache  [2]=V cache  [3]=out  [4]=token table (ragged)
//   kSwiGlu:    [0]=gate (in/out)  [1]=up
//   kNormMatMul: [0]=x  [1..3]=W_i  [4..6]=bias_i  [7..9]=out_i  [10]=xn (n, d) F32 scratch the
//                device may use for the normed rows  [11]=norm weight (1, d) F32
//   kNormSwiGlu: [0]=x  [1]=W_gate  [2]=W_up  [7]=out (n, ffn)  [8]=up scratch (n, ffn)
//                [10]=xn scratch  [11]=norm weight
//   kArgmax:    [0]=logits (1, n) F32  [1]=scratch (1, words) F32-sized  [2]=out (1, 1) int32
//               (-1: no finite or +inf logit, i.e. every logit -inf or NaN; NaN is never chosen)
//   kSample:    as kArgmax; out -1: no token or the device cannot draw this one exactly (the host
//               then draws with the same uniform: Sampler::sample_with_uniform)
constexpr int kMaxOpTensors = 12;

struct DeviceCounters {
  uint64_t dispatches = 0;
  uint64_t bytes_bound = 0;
};

struct OpCall {
  OpCode op;
  std::array<Tensor, kMaxOpTensors> t{};

  OpParams p{};
};

// Rows [first_row, first_row + rows) of a row-major tensor.
inline Tensor row_view(const Tensor& t, int64_t first_row, int64_t rows) {
  Tensor v = t;
  v.offset += static_cast<size_t>(first_row) * t.row_stride;
  v.rows = rows;
  return v;
}

constexpr int32_t kMaxRaggedSeqs = 256;  // OpParams::n_seqs at most

// Where token t of a kRopeKv / kAttention call sits: its position and the byte offset of its
// slot's cache from the call's cache views (0 for a plain call).
struct TokenSlots {
  const int32_t* table = nullptr;  // ragged: (slot, position) per token; null: positions pos0 + t
  int64_t pos0 = 0;
  size_t stride = 0;
  explicit TokenSlots(const OpCall& c);
  int64_t pos(int64_t t) const { return table != nullptr ? table[2 * t + 1] : pos0 + t; }
  size_t kv_offset(int64_t t) const { return table != nullptr ? static_cast<size_t>(table[2 * t]) * stride : 0; }
};

// The runs of a ragged kRopeKv / kAttention call in token order: f(first token, tokens, slot,
// pos0). Checks the table (its size, slots < n_seqs, each slot's tokens one run of consecutive
// positions, the slot's cache inside the buffer) and throws InvalidArgument naming `where`.
// A plain call (n_seqs == 0) is one run of slot 0 at pos0.
void for_each_run(const OpCall& c, const char* where,
                  void (*f)(void* ctx, int64_t first, int64_t n, int32_t slot, int64_t pos0), void* ctx);

class Device {
 public:
  virtual ~Device() = default;
  virtual const char* name() const = 0;
  // Zero-initialised allocation; throws OutOfMemory.
  virtual Buffer alloc(size_t nbytes) = 0;
  // Zero-copy view of caller-owned host memory that outlives the buffer.
  virtual Buffer wrap_host(const void* ptr, size_t nbytes) = 0;
  virtual void release(Buffer& buf) = 0;
  // Once per weight at load: returns the tensor to compute with. A device may repack it into a
  // layout of its own (its memory, freed with the device); the view's contents stay valid.
  // `evictable`: the view is a read-only shared file mapping, so after a repack the device may
  // drop its pages from the process (madvise DONTNEED re-reads them from the file if touched).
  virtual Tensor prepare_weight(const Tensor& view, bool evictable) = 0;
  virtual void copy_in(const Buffer& dst, size_t offset, const void* src, size_t nbytes) = 0;
  virtual void copy_out(const Buffer& src, size_t offset, void* dst, size_t nbytes) = 0;
  virtual bool supports(OpCode op, DType dtype) const = 0;
  virtual void run(const OpCall& call) = 0;
  virtual void synchronize() = 0;
  // Work issued since construction: kernel dispatches (cpu: ops run) and the bytes their bound
  // buffers span (0 where a device does not count them). For the benchmark's dispatches per layer.
  virtual DeviceCounters counters() const = 0;
  // 32-bit words of kArgmax / kSample scratch for a row of n_vocab logits (the Metal plan's
  // partial results; 0 for a device that needs none). The engine allocates it once at load.
  virtual int64_t draw_scratch_words(int64_t /*n_vocab*/) const { return 0; }
  // Runs fn(ctx, i) for every i in [0, n) on the device's host threads (the CPU device's pool;
  // the calling thread alone elsewhere): host work between passes, such as each sequence's draw.
  // fn must not throw.
  virtual void host_parallel(int64_t n, void (*fn)(void* ctx, int64_t i), void* ctx) {
    for (int64_t i = 0; i < n; ++i) fn(ctx, i);
  }
};

// The unfused meaning of a fused op as the plain ops it stands for, each handed to `run` (a device
// without a fused kernel, or with one that does not cover the call, runs these). Matmul weights
// are grouped by dtype and layout, as kMatMul requires. A ragged kRopeKv / kAttention becomes one
// plain call per run. Other ops are passed through.
void decompose(const OpCall& call, void (*run)(void* ctx, const OpCall& op), void* ctx);

// cpu: which kernels run matmuls over repacked quantized weights. kAuto: AMX-INT8 tiles for calls
// of cpu/amx.h's kAmxMinTokens tokens or more where the process can use them, else the SIMD
// kernels (the environment variable METALLIC_AMX=0 forces kSimd, =emulate kAmxEmulated). kSimd:
// always the SIMD kernels. kAmx and kAmxEmulated run every such call on the tiles, whatever its
// tokens: kAmx on the hardware (DeviceUnavailable where cpu::amx_status() says no), kAmxEmulated
// with the tile instructions done in portable C++ (tests). Every choice gives bit-identical results.
enum class TileEngine : int32_t { kAuto = 0, kSimd = 1, kAmx = 2, kAmxEmulated = 3 };

// The largest op a plan will issue, so a device sizes its scratch once (never in the token loop).
struct DeviceLimits {
  int64_t max_tokens = 1;   // rows of activations per op
  int64_t max_cols = 32;    // widest activation row fed to a matmul
  int64_t kv_capacity = 1;  // KV rows per head
  int32_t head_dim = 1;
  int32_t max_group = 1;  // query heads per KV head (GQA), the most of any layer
  int32_t max_heads = 1;  // query heads of a layer, the most of any
  // cpu: K-cache bytes per KV head from which one decode token's attention is split over the
  // threads (cpu/kernels.cpp split_decode; tests lower it to run the split at small sizes).
  int64_t attn_split_bytes = int64_t{1} << 20;
  int64_t n_vocab = 1;  // logits per row (kArgmax)
  TileEngine matmul_tiles = TileEngine::kAuto;
};

// Factory (core/device_factory.cpp; threads <= 0 → hardware concurrency): "cpu"; "metal-emulated"
// (the Metal shaders run by the emulator library; DeviceUnavailable when it was not built);
// "metal" (Apple builds; DeviceUnavailable elsewhere); anything else InvalidArgument.
std::unique_ptr<Device> make_device(const std::string& name, int threads, const DeviceLimits& limits);

}  // namespace metallic
