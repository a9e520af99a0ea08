// The decoder plan: one transformer forward written once against the Device interface.
//
// Per layer and batch of tokens the plan issues six ops: NormMatMul(rmsnorm; q,k,v [+bias]),
// RopeKv, Attention, MatMul(o, += residual), NormSwiGlu(rmsnorm; gate, up; SwiGLU),
// MatMul(down, += residual). A device runs a fused op as one kernel or as the plain ops it stands
// for (core/device.h decompose). Buffers are allocated once at construction for `max_batch` tokens and the full
// context; forward()/decode() allocate nothing.
#pragma once

#include <atomic>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "core/device.h"
#include "model/config.h"
#include "model/sampler.h"

namespace metallic {

class Engine {
 public:
  // Validates config and every weight (names, dtypes, shapes, byte sizes); throws typed errors.
  // `weights_evictable`: every weight is a view of a read-only shared file mapping (see
  // Device::prepare_weight); false for weights in ordinary memory.
  // batch_size: tokens per forward pass of a long prompt (llama.cpp's n_batch): bounds the
  // activation buffers; a sliding-window layer's ring holds window + batch_size rows.
  static constexpr int64_t kDefaultBatch = 256;
  static constexpr int64_t kMaxBatchSize = 8192;
  // n_seq: sequence slots, each with its own KV cache of context_length positions (and its own
  // sliding-window rings); forward_batch runs tokens of several slots in one pass. The
  // single-sequence calls (forward, decode, read_kv, write_kv) use slot 0.
  static constexpr int64_t kMaxSeq = 256;
  Engine(const ModelConfig& cfg, const WeightMap& weights, const std::string& device, int threads,
         int64_t context_length, DType kv_dtype, bool weights_evictable = false, int64_t batch_size = kDefaultBatch,
         int64_t n_seq = 1);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // tokens: (n,), positions start_pos .. start_pos+n-1. logits_out: (n, n_vocab) if all_logits,
  // else (1, n_vocab) for the last position (may be null: then only last_logits() is updated).
  // A token the device draws from the last row's logits behind the head (decode): op kArgmax or
  // kSample with its params; token: the draw, or < 0 when the host must draw (core/device.h).
  struct DeviceDraw {
    OpCode op;
    OpParams p;
    int32_t token = -1;
  };
  // draw (not with all_logits): the device also draws a token from the last row's logits.
  void forward(const int32_t* tokens, int64_t n, int64_t start_pos, float* logits_out, bool all_logits,
               DeviceDraw* draw = nullptr);
  // One token at `pos`; returns the token sampled from its logits.
  int32_t decode(int32_t token, int64_t pos, Sampler& sampler);

  // A ragged batch (llama.cpp's llama_batch without padding): segment i is the next n tokens of
  // slot `slot` at positions pos0 .. pos0+n-1, its tokens the next n of `tokens`. Projections and
  // the MLP run once over all tokens (weights read once); RoPE and attention run per token on its
  // slot's KV (one ragged call). Segments name distinct slots; their tokens add up to at most
  // batch_size. A segment's `logits` (0..n) last tokens get logits rows, in segment order: into
  // `logits_out` (rows x n_vocab, caller memory wrapped for the call) when given, else into
  // batch_logits() ((n_seq, n_vocab)); returns how many rows were written. Every token's logits
  // equal those of a forward() of its sequence alone (the kernels are batch-invariant).
  struct Segment {
    int32_t slot = 0;
    int32_t n = 0;
    int64_t pos0 = 0;
    int32_t logits = 0;
  };
  int64_t forward_batch(const int32_t* tokens, int64_t n_tokens, const Segment* segs, int64_t n_segs,
                        float* logits_out = nullptr, int64_t logits_rows = 0);
  // Draws token i from row rows[i] of `logits` (n_rows x n_vocab) with samplers[i], for i in
  // [0, k), in parallel on the device's host threads (each sampler draws as its sample() alone
  // would: its own RNG, history and mask). out[i] is the token, or -1 with errors[i] set when
  // sampler i failed (a mask that allows no token); the other draws are unaffected. The samplers
  // must be distinct (k <= kMaxSeq).
  void sample_rows(Sampler* const* samplers, const float* logits, int64_t n_rows, const int64_t* rows, int64_t k,
                   int32_t* out, std::exception_ptr* errors);
  const float* batch_logits() const { return batch_logits_.data(); }
  int64_t n_seq() const { return n_seq_; }
  int64_t batch_size() const { return max_batch_; }
  // Prefix reuse across slots: dst's KV of positions [0, n) becomes src's (what a forward at
  // start_pos n in dst needs; sliding-window layers copy their last window rows). Fails
  // (InvalidArgument) when src's rings no longer hold them (kv_reusable(n, src)).
  void copy_seq(int32_t src, int32_t dst, int64_t n);

  // KV rows of the first n positions, laid out (layer, K then V, kv head, position, head_dim) in the
  // cache dtype: kv_bytes(n) bytes. A sliding-window layer has only the last min(n, window)
  // positions (all its next query sees). For prompt-cache files; n <= context.
  // read_kv fails (InvalidArgument) when a ring no longer holds those rows (kv_reusable(n)).
  //
  // kv_reusable(n): the cache holds every row a forward() at start_pos n needs (the window before
  // position n of each ring layer, given the positions written since); false: recompute from 0.
  size_t kv_bytes(int64_t n) const;
  void read_kv(int64_t n, void* dst, size_t nbytes);
  void write_kv(int64_t n, const void* src, size_t nbytes);
  bool kv_reusable(int64_t n, int32_t slot = 0) const;
  size_t kv_cache_bytes() const { return kv_alloc_bytes_; }  // the KV cache's allocation
  DType kv_dtype() const { return kv_dtype_; }               // F32, F16, or Q8_0 / Q4_0 (cpu; head_dim % 32 == 0)

  const float* last_logits() const { return last_logits_.data(); }
  void cancel() { cancel_.store(true, std::memory_order_release); }
  void close();
  bool closed() const { return device_ == nullptr; }
  int64_t context_length() const { return ctx_; }
  int64_t n_vocab() const { return cfg_.n_vocab; }
  const char* device_name() const;

  // What the device issued: totals since load, and for the transformer layers of the last
  // forward batch (its tokens, dispatches and bytes bound), for dispatches per layer per token.
  struct Stats {
    uint64_t last_layer_dispatches = 0;
    uint64_t last_layer_bytes = 0;
    int64_t last_tokens = 0;
  };
  const Stats& stats() const { return stats_; }
  DeviceCounters device_counters() const;
  int64_t n_layer() const { return static_cast<int64_t>(layers_.size()); }

 private:
  struct Layer {
    Tensor attn_norm, wq, wk, wv, bq, bk, bv, wo, ffn_norm, w_gate, w_up, w_down;
    Tensor q_norm, k_norm, post_attn_norm, post_ffn_norm;  // family switches (qk_norm, post_norms)
    Tensor k_cache, v_cache;                               // (n_head_kv * kv_cap, head_dim)
    const Tensor* inv_freq = nullptr;                      // global or local RoPE frequencies
    int32_t window = 0;                                    // sliding window (0: global)
    int64_t kv_cap = 0;       // rows per KV head: the context, or a ring of window + max_batch rows
    size_t kv_seq_bytes = 0;  // bytes of one slot's K (or V) rows; slot s at k_cache.offset + s * this
    struct Ring {             // a slot's ring holds positions [lo, end) (note_rows_written)
      int64_t lo = 0;
      int64_t end = 0;
    };
    std::vector<Ring> rings;  // per slot
  };

  void build(const WeightMap& weights, const std::string& device, int threads);
  Tensor weight(const WeightMap& w, const std::string& name, int64_t rows, int64_t cols, bool required);
  // A 1-D weight as F32 (offset: added to every element, for norm weights stored as w of x*(1+w)).
  Tensor vector_f32(const WeightMap& w, const std::string& name, int64_t n, bool required, float offset = 0.f);
  Tensor norm_weight(const WeightMap& w, const std::string& name, int64_t n, bool required) {
    return vector_f32(w, name, n, required, cfg_.norm_weight_offset);
  }
  void post_norm(const Tensor& y, const Tensor& w, int64_t n);                 // x_ += rmsnorm(y) * w
  void head_norm(const Tensor& t, int64_t heads, const Tensor& w, int64_t n);  // per-head RMSNorm in place
  Tensor activations(int64_t cols);
  void batch(const int32_t* tokens, int64_t n, int64_t pos0, float* logits_out, bool all_logits, bool need_head,
             DeviceDraw* draw);
  void layers(const int32_t* tokens, int64_t n, const Segment* segs, int64_t n_segs);  // embed + every layer
  void softcap_logits(float* rows, int64_t n_rows) const;                              // final_softcap, on the host
  Tensor kv_view(const Layer& L, const Tensor& cache, int32_t slot) const;
  void check_slot(int32_t slot, const char* where) const;
  void matmul(const Tensor& x, int64_t n, std::initializer_list<std::pair<const Tensor*, const Tensor*>> wb,
              std::initializer_list<const Tensor*> outs, bool accumulate);
  void check_open(const char* where) const;
  void note_rows_written(Layer& L, int32_t slot, int64_t s, int64_t e);
  int64_t kv_rows(const Layer& L, int64_t n) const;  // rows of the first n positions read_kv holds
  void check_rows_held(int64_t n, int32_t slot, const char* where) const;
  template <typename F>
  void for_kv_runs(int64_t n, int32_t slot, F&& f) const;
  void set_rings(int64_t n, int32_t slot);  // slot's rings hold positions [n - kv_rows, n)
  // Exactly one of dst (read) and src (write) is non-null; see read_kv / write_kv.
  void copy_kv(int64_t n, void* dst, const void* src, size_t nbytes, const char* where);

  ModelConfig cfg_;
  int64_t ctx_;
  int64_t max_batch_;
  int64_t n_seq_;
  size_t kv_alloc_bytes_ = 0;
  DType kv_dtype_;
  bool weights_evictable_;
  std::unique_ptr<Device> device_;
  std::vector<Buffer> owned_;  // buffers to release at close
  Tensor tok_embd_, output_norm_, output_, inv_freq_, inv_freq_local_;
  Tensor logits_;                   // (1, n_vocab) view of last_logits_, wrapped once
  Tensor draw_scratch_, draw_out_;  // device draws (kArgmax / kSample); unset: not supported
  std::vector<Layer> layers_;
  Tensor x_, xn_, q_, k_, v_, att_, gate_, up_, tokens_;  // activations (max_batch, ...)
  Tensor tok_table_;               // (max_batch, 2) int32 (slot, position): ragged rope / attention
  std::vector<int32_t> tok_host_;  // its host staging, filled once per forward_batch
  std::vector<float> last_logits_;
  std::vector<float> batch_logits_;  // (n_seq, n_vocab): forward_batch's rows
  Tensor batch_logits_t_;            // its device view, wrapped once
  Stats stats_;
  std::atomic<bool> cancel_{false};
  std::atomic<bool> busy_{false};
};

}  // namespace metallic
