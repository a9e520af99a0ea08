#include "model/engine.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "model/engine_internal.h"

namespace metallic {

using detail::BusyGuard;
using detail::row_view;

namespace {

constexpr int64_t kMaxContext = 1 << 22;  // sanity cap on context_length

std::string dims(int64_t a, int64_t b) { return std::to_string(a) + "x" + std::to_string(b); }

std::string shape_str(const std::vector<int64_t>& s) {
  std::string r;
  for (size_t i = 0; i < s.size(); ++i) r += (i ? "x" : "") + std::to_string(s[i]);
  return r.empty() ? "()" : r;
}

void check_cfg(bool ok, const std::string& what) { check(ok, ErrorCode::kInvalidArgument, "engine.config", what); }

}  // namespace

Engine::Engine(const ModelConfig& cfg, const WeightMap& weights, const std::string& device, int threads,
               int64_t context_length, DType kv_dtype, bool weights_evictable, int64_t batch_size, int64_t n_seq)
    : cfg_(cfg),
      ctx_(context_length),
      max_batch_(batch_size),
      n_seq_(n_seq),
      kv_dtype_(kv_dtype),
      weights_evictable_(weights_evictable) {
  const ModelConfig& c = cfg_;
  check_cfg(c.n_vocab > 0 && c.n_embd > 0 && c.n_layer > 0 && c.n_head > 0 && c.n_head_kv > 0 && c.n_ff > 0,
            "n_vocab, n_embd, n_layer, n_head, n_head_kv and n_ff must all be > 0");
  check_cfg(c.head_dim > 0 && c.head_dim % 2 == 0,
            "head_dim: expected a positive even number, got " + std::to_string(c.head_dim));
  check_cfg(c.n_head % c.n_head_kv == 0, "n_head_kv must divide n_head: got n_head=" + std::to_string(c.n_head) +
                                             ", n_head_kv=" + std::to_string(c.n_head_kv));
  check_cfg(c.rope_dim >= 0 && c.rope_dim <= c.head_dim && c.rope_dim % 2 == 0,
            "rope_dim: expected an even number in 0..head_dim, got " + std::to_string(c.rope_dim));
  const int64_t rot = c.rope_dim > 0 ? c.rope_dim : c.head_dim;
  check_cfg(
      static_cast<int64_t>(c.rope_inv_freq.size()) == rot / 2,
      "rope_inv_freq: expected " + std::to_string(rot / 2) + " values, got " + std::to_string(c.rope_inv_freq.size()));
  check_cfg(std::isfinite(c.rope_mscale) && c.rope_mscale > 0.f, "rope_mscale: expected > 0");
  for (float f : c.rope_inv_freq) check_cfg(std::isfinite(f), "rope_inv_freq: non-finite value");
  check_cfg(std::isfinite(c.rms_eps) && c.rms_eps > 0.f, "rms_eps: expected > 0");
  check_cfg(std::isfinite(c.embed_scale), "embed_scale: expected a finite value");
  check_cfg(std::isfinite(c.attn_scale) && c.attn_scale >= 0.f, "attn_scale: expected >= 0");
  check_cfg(c.activation == Activation::kSilu || c.activation == Activation::kGeluTanh,
            "activation: expected SILU or GELU_TANH");
  check_cfg(
      c.layer_window.empty() || static_cast<int64_t>(c.layer_window.size()) == c.n_layer,
      "layer_window: expected " + std::to_string(c.n_layer) + " values, got " + std::to_string(c.layer_window.size()));
  for (int32_t w : c.layer_window) check_cfg(w >= 0, "layer_window: expected values >= 0");
  check_cfg(c.rope_inv_freq_local.empty() || c.rope_inv_freq_local.size() == c.rope_inv_freq.size(),
            "rope_inv_freq_local: expected " + std::to_string(rot / 2) + " values, got " +
                std::to_string(c.rope_inv_freq_local.size()));
  for (float f : c.rope_inv_freq_local) check_cfg(std::isfinite(f), "rope_inv_freq_local: non-finite value");
  check_cfg(std::isfinite(c.norm_weight_offset), "norm_weight_offset: expected a finite value");
  check_cfg(std::isfinite(c.attn_softcap) && c.attn_softcap >= 0.f, "attn_softcap: expected >= 0");
  check_cfg(std::isfinite(c.final_softcap) && c.final_softcap >= 0.f, "final_softcap: expected >= 0");
  check(context_length > 0 && context_length <= kMaxContext, ErrorCode::kInvalidArgument, "engine",
        "context_length: expected 1.." + std::to_string(kMaxContext) + ", got " + std::to_string(context_length));
  check(batch_size >= 1 && batch_size <= kMaxBatchSize, ErrorCode::kInvalidArgument, "engine",
        "batch_size: expected 1.." + std::to_string(kMaxBatchSize) + ", got " + std::to_string(batch_size));
  check(n_seq >= 1 && n_seq <= kMaxSeq, ErrorCode::kInvalidArgument, "engine",
        "n_seq: expected 1.." + std::to_string(kMaxSeq) + ", got " + std::to_string(n_seq));
  check(kv_dtype == DType::kF32 || kv_dtype == DType::kF16 || kv_dtype == DType::kQ8_0 || kv_dtype == DType::kQ4_0,
        ErrorCode::kUnsupportedDType, "engine",
        std::string("kv_dtype: expected F32, F16, Q8_0 or Q4_0, got ") + dtype_name(kv_dtype));
  // A quantized cache stores each K / V row of head_dim values as whole blocks of 32.
  const int32_t kv_block = dtype_info(kv_dtype).block_elems;
  check(c.head_dim % kv_block == 0, ErrorCode::kUnsupportedDType, "engine",
        std::string("kv_dtype ") + dtype_name(kv_dtype) + ": head_dim must be a multiple of its block of " +
            std::to_string(kv_block) + ", got head_dim " + std::to_string(c.head_dim));
  if (cfg_.attn_scale == 0.f) cfg_.attn_scale = 1.f / std::sqrt(static_cast<float>(c.head_dim));

  try {
    build(weights, device, threads);
  } catch (...) {
    close();  // a constructor that throws never runs ~Engine: release what was made so far
    throw;
  }
}

// The device, weights, KV cache and activation buffers (every buffer recorded in owned_ as soon
// as it exists, so close() can release a partly built engine).
void Engine::build(const WeightMap& weights, const std::string& device, int threads) {
  const ModelConfig& c = cfg_;
  const int64_t q_dim = c.n_head * c.head_dim;
  const int64_t kv_dim = c.n_head_kv * c.head_dim;
  max_batch_ = std::min(max_batch_, ctx_);
  DeviceLimits lim;
  lim.max_tokens = max_batch_;
  lim.max_cols = std::max({c.n_embd, c.n_ff, q_dim});
  lim.kv_capacity = ctx_;
  lim.head_dim = static_cast<int32_t>(c.head_dim);
  lim.max_group = static_cast<int32_t>(std::max<int64_t>(1, c.n_head / std::max<int64_t>(1, c.n_head_kv)));
  lim.max_heads = static_cast<int32_t>(std::max<int64_t>(1, c.n_head));
  lim.n_vocab = c.n_vocab;
  device_ = make_device(device, threads, lim);
  // A device without rope_kv / attention kernels for the cache type refuses it here, before any
  // weight is prepared. Every device has them for F32, F16, Q8_0 and Q4_0 today (cpu, and both
  // Metal devices through shaders/kv_cache.h); the check keeps a future device honest.
  check(device_->supports(OpCode::kRopeKv, kv_dtype_) && device_->supports(OpCode::kAttention, kv_dtype_),
        ErrorCode::kNotImplemented, "engine",
        std::string("kv_dtype ") + dtype_name(kv_dtype_) + ": a KV cache of this type is not implemented on the " +
            device_->name() + " device");

  tok_embd_ = weight(weights, "token_embd.weight", c.n_vocab, c.n_embd, true);
  output_norm_ = norm_weight(weights, "output_norm.weight", c.n_embd, true);
  output_ = c.tied_embeddings ? tok_embd_ : weight(weights, "output.weight", c.n_vocab, c.n_embd, true);
  {
    Buffer b = device_->alloc(c.rope_inv_freq.size() * sizeof(float));
    owned_.push_back(b);
    device_->copy_in(b, 0, c.rope_inv_freq.data(), c.rope_inv_freq.size() * sizeof(float));
    inv_freq_ = Tensor{b, 0, DType::kF32, 1, static_cast<int64_t>(c.rope_inv_freq.size()), b.nbytes};
  }
  inv_freq_local_ = inv_freq_;
  if (!c.rope_inv_freq_local.empty()) {
    Buffer b = device_->alloc(c.rope_inv_freq_local.size() * sizeof(float));
    owned_.push_back(b);
    device_->copy_in(b, 0, c.rope_inv_freq_local.data(), c.rope_inv_freq_local.size() * sizeof(float));
    inv_freq_local_ = Tensor{b, 0, DType::kF32, 1, static_cast<int64_t>(c.rope_inv_freq_local.size()), b.nbytes};
  }

  // Per layer and slot: the whole context, or for a sliding-window layer a ring of window +
  // max_batch rows (position p in row p % rows): Gemma 3's local layers cost W rows, not the
  // context. One zeroed allocation for the whole cache: pages are touched only as rows fill.
  // Per layer: K of every slot, then V of every slot.
  const size_t kv_row = row_bytes(kv_dtype_, c.head_dim);  // F32 / F16 values or Q8_0 / Q4_0 blocks
  std::vector<int64_t> caps(static_cast<size_t>(c.n_layer));
  size_t kv_total = 0;
  for (int64_t i = 0; i < c.n_layer; ++i) {
    const int64_t w = c.layer_window.empty() ? 0 : c.layer_window[static_cast<size_t>(i)];
    caps[static_cast<size_t>(i)] = w > 0 ? std::min(ctx_, w + max_batch_) : ctx_;
    kv_total += 2 * static_cast<size_t>(n_seq_ * c.n_head_kv * caps[static_cast<size_t>(i)]) * kv_row;
  }
  kv_alloc_bytes_ = kv_total;
  Buffer kv = device_->alloc(kv_total);
  owned_.push_back(kv);
  size_t kv_at = 0;

  layers_.resize(static_cast<size_t>(c.n_layer));
  for (int64_t i = 0; i < c.n_layer; ++i) {
    const std::string p = "blk." + std::to_string(i) + ".";
    Layer& L = layers_[static_cast<size_t>(i)];
    L.attn_norm = norm_weight(weights, p + "attn_norm.weight", c.n_embd, true);
    L.q_norm = norm_weight(weights, p + "attn_q_norm.weight", c.head_dim, c.qk_norm);
    L.k_norm = norm_weight(weights, p + "attn_k_norm.weight", c.head_dim, c.qk_norm);
    L.post_attn_norm = norm_weight(weights, p + "post_attention_norm.weight", c.n_embd, c.post_norms);
    L.post_ffn_norm = norm_weight(weights, p + "post_ffw_norm.weight", c.n_embd, c.post_norms);
    L.window = c.layer_window.empty() ? 0 : c.layer_window[static_cast<size_t>(i)];
    L.inv_freq = L.window > 0 ? &inv_freq_local_ : &inv_freq_;
    L.wq = weight(weights, p + "attn_q.weight", q_dim, c.n_embd, true);
    L.wk = weight(weights, p + "attn_k.weight", kv_dim, c.n_embd, true);
    L.wv = weight(weights, p + "attn_v.weight", kv_dim, c.n_embd, true);
    L.bq = vector_f32(weights, p + "attn_q.bias", q_dim, c.qkv_bias);
    L.bk = vector_f32(weights, p + "attn_k.bias", kv_dim, c.qkv_bias);
    L.bv = vector_f32(weights, p + "attn_v.bias", kv_dim, c.qkv_bias);
    L.wo = weight(weights, p + "attn_output.weight", c.n_embd, q_dim, true);
    L.ffn_norm = norm_weight(weights, p + "ffn_norm.weight", c.n_embd, true);
    L.w_gate = weight(weights, p + "ffn_gate.weight", c.n_ff, c.n_embd, true);
    L.w_up = weight(weights, p + "ffn_up.weight", c.n_ff, c.n_embd, true);
    L.w_down = weight(weights, p + "ffn_down.weight", c.n_embd, c.n_ff, true);
    L.kv_cap = caps[static_cast<size_t>(i)];
    L.kv_seq_bytes = static_cast<size_t>(c.n_head_kv * L.kv_cap) * kv_row;
    L.rings.assign(static_cast<size_t>(n_seq_), Layer::Ring{});
    const size_t kv_tensor = L.kv_seq_bytes * static_cast<size_t>(n_seq_);
    L.k_cache = Tensor{kv, kv_at, kv_dtype_, c.n_head_kv * L.kv_cap, c.head_dim, kv_row};  // slot 0
    L.v_cache = Tensor{kv, kv_at + kv_tensor, kv_dtype_, c.n_head_kv * L.kv_cap, c.head_dim, kv_row};
    kv_at += 2 * kv_tensor;
  }

  x_ = activations(c.n_embd);
  xn_ = activations(c.n_embd);
  q_ = activations(q_dim);
  k_ = activations(kv_dim);
  v_ = activations(kv_dim);
  att_ = activations(q_dim);
  gate_ = activations(c.n_ff);
  up_ = activations(c.n_ff);
  tokens_ = activations(1);     // int32 per row, same width as a float
  tok_table_ = activations(2);  // (slot, position) int32 per row: ragged batches
  tok_host_.assign(static_cast<size_t>(2 * max_batch_), 0);
  last_logits_.assign(static_cast<size_t>(c.n_vocab), 0.f);
  // The head writes the last row's logits here; wrapped once (a Metal buffer per token would be
  // an allocation in the token loop).
  const size_t row_b = static_cast<size_t>(c.n_vocab) * sizeof(float);
  Buffer lb = device_->wrap_host(last_logits_.data(), row_b);
  owned_.push_back(lb);
  logits_ = Tensor{lb, 0, DType::kF32, 1, c.n_vocab, row_b};
  batch_logits_.assign(static_cast<size_t>(n_seq_ * c.n_vocab), 0.f);
  Buffer bb = device_->wrap_host(batch_logits_.data(), row_b * static_cast<size_t>(n_seq_));
  owned_.push_back(bb);
  batch_logits_t_ = Tensor{bb, 0, DType::kF32, n_seq_, c.n_vocab, row_b};
  if (device_->supports(OpCode::kArgmax, DType::kF32)) {  // decode draws on the device (decode())
    const int64_t words = std::max<int64_t>(1, device_->draw_scratch_words(c.n_vocab));
    Buffer sb = device_->alloc(static_cast<size_t>(words) * 4);
    owned_.push_back(sb);
    draw_scratch_ = Tensor{sb, 0, DType::kF32, 1, words, sb.nbytes};
    Buffer tb = device_->alloc(sizeof(int32_t));
    owned_.push_back(tb);
    draw_out_ = Tensor{tb, 0, DType::kF32, 1, 1, sizeof(int32_t)};
  }
}

Engine::~Engine() { close(); }

void Engine::close() {
  if (!device_) return;
  device_->synchronize();
  for (Buffer& b : owned_) device_->release(b);
  owned_.clear();
  layers_.clear();
  device_.reset();
  std::vector<float>().swap(last_logits_);
  std::vector<float>().swap(batch_logits_);
}

const char* Engine::device_name() const { return device_ ? device_->name() : "closed"; }

DeviceCounters Engine::device_counters() const {
  check_open("engine.device_counters");
  return device_->counters();
}

void Engine::check_open(const char* where) const {
  check(device_ != nullptr, ErrorCode::kClosed, where, "the model was closed");
}

Tensor Engine::weight(const WeightMap& w, const std::string& name, int64_t rows, int64_t cols, bool required) {
  const auto it = w.find(name);
  if (it == w.end()) {
    check(!required, ErrorCode::kCorruptFile, "engine", "missing tensor " + name);
    return Tensor{};
  }
  const WeightSpec& s = it->second;
  check(s.shape.size() == 2 && s.shape[0] == rows && s.shape[1] == cols, ErrorCode::kShapeMismatch, "engine",
        "tensor " + name + ": expected " + dims(rows, cols) + ", got " + shape_str(s.shape));
  const DTypeInfo info = dtype_info(s.dtype);
  check(cols % info.block_elems == 0, ErrorCode::kShapeMismatch, "engine",
        "tensor " + name + ": row length " + std::to_string(cols) + " is not a multiple of the " + info.name +
            " block of " + std::to_string(info.block_elems));
  const size_t rb = row_bytes(s.dtype, cols);
  check(s.data != nullptr && s.nbytes == rb * static_cast<size_t>(rows), ErrorCode::kCorruptFile, "engine",
        "tensor " + name + ": expected " + std::to_string(rb * static_cast<size_t>(rows)) + " bytes, got " +
            std::to_string(s.nbytes));
  check(device_->supports(OpCode::kMatMul, s.dtype), ErrorCode::kUnsupportedDType, "engine",
        "tensor " + name + ": " + info.name + " matmul is not supported on " + device_->name());
  Buffer b = device_->wrap_host(s.data, s.nbytes);
  owned_.push_back(b);  // released at close (the Metal device holds an MTLBuffer per wrap)
  return device_->prepare_weight(Tensor{b, 0, s.dtype, rows, cols, rb}, weights_evictable_);
}

Tensor Engine::vector_f32(const WeightMap& w, const std::string& name, int64_t n, bool required, float offset) {
  const auto it = w.find(name);
  if (it == w.end()) {
    check(!required, ErrorCode::kCorruptFile, "engine", "missing tensor " + name);
    return Tensor{};
  }
  const WeightSpec& s = it->second;
  check(s.shape.size() == 1 && s.shape[0] == n, ErrorCode::kShapeMismatch, "engine",
        "tensor " + name + ": expected " + std::to_string(n) + ", got " + shape_str(s.shape));
  check(s.dtype == DType::kF32 || s.dtype == DType::kF16 || s.dtype == DType::kBF16, ErrorCode::kUnsupportedDType,
        "engine", "tensor " + name + ": expected F32, F16 or BF16, got " + dtype_name(s.dtype));
  check(s.data != nullptr && s.nbytes == row_bytes(s.dtype, n), ErrorCode::kCorruptFile, "engine",
        "tensor " + name + ": expected " + std::to_string(row_bytes(s.dtype, n)) + " bytes, got " +
            std::to_string(s.nbytes));
  Buffer b = device_->alloc(static_cast<size_t>(n) * sizeof(float));
  owned_.push_back(b);
  std::vector<float> tmp(static_cast<size_t>(n));
  switch (s.dtype) {
    case DType::kF32: std::memcpy(tmp.data(), s.data, s.nbytes); break;
    case DType::kF16:
      for (int64_t i = 0; i < n; ++i)
        tmp[static_cast<size_t>(i)] = fp16_to_f32(static_cast<const uint16_t*>(s.data)[i]);
      break;
    case DType::kBF16:
      for (int64_t i = 0; i < n; ++i)
        tmp[static_cast<size_t>(i)] = bf16_to_f32(static_cast<const uint16_t*>(s.data)[i]);
      break;
    case DType::kQ8_0:
    case DType::kQ4_0:
    case DType::kQ4_1:
    case DType::kQ5_0:
    case DType::kQ5_1:
    case DType::kQ4_K:
    case DType::kQ5_K:
    case DType::kQ6_K: break;  // rejected above
  }
  if (offset != 0.f)
    for (float& v : tmp) v += offset;
  device_->copy_in(b, 0, tmp.data(), b.nbytes);
  return Tensor{b, 0, DType::kF32, 1, n, b.nbytes};
}

Tensor Engine::activations(int64_t cols) {
  const size_t stride = static_cast<size_t>(cols) * sizeof(float);
  Buffer b = device_->alloc(stride * static_cast<size_t>(max_batch_));
  owned_.push_back(b);
  return Tensor{b, 0, DType::kF32, max_batch_, cols, stride};
}

void Engine::matmul(const Tensor& x, int64_t n, std::initializer_list<std::pair<const Tensor*, const Tensor*>> wb,
                    std::initializer_list<const Tensor*> outs, bool accumulate) {
  // Weights sharing x are issued together when dtype and layout match (one activation
  // quantization).
  const auto* w_it = wb.begin();
  const auto* o_it = outs.begin();
  while (w_it != wb.end()) {
    OpCall call{OpCode::kMatMul};
    call.t[0] = x;
    call.p.n_tokens = n;
    call.p.accumulate = accumulate;
    int k = 0;
    const DType dt = w_it->first->dtype;
    const Layout lay = w_it->first->layout;
    while (w_it != wb.end() && k < 3 && w_it->first->dtype == dt && w_it->first->layout == lay) {
      call.t[1 + k] = *w_it->first;
      if (w_it->second != nullptr) call.t[4 + k] = *w_it->second;
      call.t[7 + k] = **o_it;
      ++k;
      ++w_it;
      ++o_it;
    }
    call.p.n_weights = k;
    device_->run(call);
  }
}

void Engine::post_norm(const Tensor& y, const Tensor& w, int64_t n) {
  OpCall norm{OpCode::kRmsNorm};
  norm.t[0] = y;
  norm.t[1] = w;
  norm.t[2] = x_;
  norm.p.n_tokens = n;
  norm.p.eps = cfg_.rms_eps;
  norm.p.accumulate = true;
  device_->run(norm);
}

// The (n, heads * head_dim) rows of t seen as n * heads rows of head_dim, normed in place.
void Engine::head_norm(const Tensor& t, int64_t heads, const Tensor& w, int64_t n) {
  Tensor v = t;
  v.rows = t.rows * heads;
  v.cols = cfg_.head_dim;
  v.row_stride = static_cast<size_t>(cfg_.head_dim) * sizeof(float);
  OpCall norm{OpCode::kRmsNorm};
  norm.t[0] = v;
  norm.t[1] = w;
  norm.t[2] = v;
  norm.p.n_tokens = n * heads;
  norm.p.eps = cfg_.rms_eps;
  device_->run(norm);
}

// Embedding and every transformer layer over n tokens made of segments (one per slot, in token
// order; forward() is one segment of slot 0).
void Engine::layers(const int32_t* tokens, int64_t n, const Segment* runs, int64_t n_runs) {
  const ModelConfig& c = cfg_;
  device_->copy_in(tokens_.buf, 0, tokens, static_cast<size_t>(n) * sizeof(int32_t));
  {
    OpCall e{OpCode::kEmbed};
    e.t[0] = tok_embd_;
    e.t[1] = tokens_;
    e.t[2] = x_;
    e.p.n_tokens = n;
    e.p.scale = c.embed_scale;
    device_->run(e);
  }
  for (Layer& L : layers_)
    for (int64_t i = 0; i < n_runs; ++i) note_rows_written(L, runs[i].slot, runs[i].pos0, runs[i].pos0 + runs[i].n);
  if (n_runs > 1) {  // the token table of the ragged rope / attention calls: (slot, position)
    int64_t t = 0;
    for (int64_t i = 0; i < n_runs; ++i)
      for (int32_t j = 0; j < runs[i].n; ++j, ++t) {
        tok_host_[static_cast<size_t>(2 * t)] = runs[i].slot;
        tok_host_[static_cast<size_t>(2 * t + 1)] = static_cast<int32_t>(runs[i].pos0 + j);
      }
    device_->copy_in(tok_table_.buf, 0, tok_host_.data(), static_cast<size_t>(2 * n) * sizeof(int32_t));
  }
  const DeviceCounters before = device_->counters();
  for (const Layer& L : layers_) {
    if (cancel_.exchange(false, std::memory_order_acq_rel)) fail(ErrorCode::kCancelled, "engine", "cancelled");
    {  // attention block: rmsnorm + q, k, v projections (+ bias) in one op
      OpCall qkv{OpCode::kNormMatMul};
      qkv.t[0] = x_;
      qkv.t[1] = L.wq;
      qkv.t[2] = L.wk;
      qkv.t[3] = L.wv;
      qkv.t[4] = L.bq;
      qkv.t[5] = L.bk;
      qkv.t[6] = L.bv;
      qkv.t[7] = q_;
      qkv.t[8] = k_;
      qkv.t[9] = v_;
      qkv.t[10] = xn_;
      qkv.t[11] = L.attn_norm;
      qkv.p.n_tokens = n;
      qkv.p.n_weights = 3;
      qkv.p.eps = c.rms_eps;
      device_->run(qkv);
    }
    if (c.qk_norm) {
      head_norm(q_, c.n_head, L.q_norm, n);
      head_norm(k_, c.n_head_kv, L.k_norm, n);
    }
    // RoPE and attention: each token with its own position and its slot's KV. One segment is a
    // plain call; several are one ragged call over the token table.
    const Segment& s0 = runs[0];
    OpCall r{OpCode::kRopeKv};
    r.t[0] = q_;
    r.t[1] = k_;
    r.t[2] = v_;
    r.t[3] = kv_view(L, L.k_cache, s0.slot);
    r.t[4] = kv_view(L, L.v_cache, s0.slot);
    r.t[5] = *L.inv_freq;
    r.p.n_tokens = n;
    r.p.pos0 = s0.pos0;
    r.p.n_head = static_cast<int32_t>(c.n_head);
    r.p.n_head_kv = static_cast<int32_t>(c.n_head_kv);
    r.p.head_dim = static_cast<int32_t>(c.head_dim);
    r.p.kv_capacity = L.kv_cap;
    r.p.window = L.window;
    r.p.neox = c.rope_neox;
    r.p.rope_dim = static_cast<int32_t>(c.rope_dim);
    r.p.rope_mscale = c.rope_mscale;
    if (n_runs > 1) {
      r.t[3] = L.k_cache;
      r.t[4] = L.v_cache;
      r.t[6] = tok_table_;
      r.p.pos0 = 0;
      r.p.n_seqs = static_cast<int32_t>(n_seq_);
      r.p.kv_seq_stride = L.kv_seq_bytes;
    }
    device_->run(r);
    OpCall a{OpCode::kAttention};
    a.t[0] = q_;
    a.t[1] = r.t[3];
    a.t[2] = r.t[4];
    a.t[3] = att_;
    a.t[4] = r.t[6];
    a.p = r.p;
    a.p.scale = c.attn_scale;
    a.p.softcap = c.attn_softcap;
    device_->run(a);
    if (c.post_norms) {  // x += rmsnorm(W_o att): the residual add moves into the norm
      matmul(att_, n, {{&L.wo, nullptr}}, {&xn_}, false);
      post_norm(xn_, L.post_attn_norm, n);
    } else {
      matmul(att_, n, {{&L.wo, nullptr}}, {&x_}, true);
    }
    {  // feed-forward block: rmsnorm + gate/up projections + SwiGLU in one op
      OpCall ffn{OpCode::kNormSwiGlu};
      ffn.t[0] = x_;
      ffn.t[1] = L.w_gate;
      ffn.t[2] = L.w_up;
      ffn.t[7] = gate_;
      ffn.t[8] = up_;
      ffn.t[10] = xn_;
      ffn.t[11] = L.ffn_norm;
      ffn.p.n_tokens = n;
      ffn.p.eps = c.rms_eps;
      ffn.p.gelu = c.activation == Activation::kGeluTanh;
      device_->run(ffn);
    }
    if (c.post_norms) {
      matmul(gate_, n, {{&L.w_down, nullptr}}, {&xn_}, false);
      post_norm(xn_, L.post_ffn_norm, n);
    } else {
      matmul(gate_, n, {{&L.w_down, nullptr}}, {&x_}, true);
    }
  }
  const DeviceCounters after = device_->counters();
  stats_.last_layer_dispatches = after.dispatches - before.dispatches;
  stats_.last_layer_bytes = after.bytes_bound - before.bytes_bound;
  stats_.last_tokens = n;
}

void Engine::batch(const int32_t* tokens, int64_t n, int64_t pos0, float* logits_out, bool all_logits, bool need_head,
                   DeviceDraw* draw) {
  const ModelConfig& c = cfg_;
  if (c.final_softcap > 0.f) draw = nullptr;  // the cap is applied on the host after the head
  const Segment run{0, static_cast<int32_t>(n), pos0, false};
  layers(tokens, n, &run, 1);
  if (!need_head) {
    device_->synchronize();
    return;
  }
  // Head: all rows into logits_out, or only the last row into last_logits_.
  const int64_t first = all_logits ? 0 : n - 1;
  const int64_t rows = n - first;
  OpCall norm{OpCode::kRmsNorm};
  norm.t[0] = row_view(x_, first, rows);
  norm.t[1] = output_norm_;
  norm.t[2] = xn_;
  norm.p.n_tokens = rows;
  norm.p.eps = c.rms_eps;
  device_->run(norm);
  float* dst = all_logits ? logits_out : last_logits_.data();
  const size_t row_b = static_cast<size_t>(c.n_vocab) * sizeof(float);
  if (all_logits) {   // the caller's (rows, n_vocab) array, wrapped for this call only
    struct Wrapped {  // released on every path, errors included
      Device& dev;
      Buffer buf;
      ~Wrapped() { dev.release(buf); }
    } w{*device_, device_->wrap_host(dst, row_b * static_cast<size_t>(rows))};
    const Tensor out{w.buf, 0, DType::kF32, rows, c.n_vocab, row_b};
    matmul(xn_, rows, {{&output_, nullptr}}, {&out}, false);
    device_->synchronize();
  } else {
    matmul(xn_, rows, {{&output_, nullptr}}, {&logits_}, false);
    if (draw != nullptr) {  // encoded behind the head: the host waits once, for one int
      OpCall d{draw->op};
      d.t[0] = logits_;
      d.t[1] = draw_scratch_;
      d.t[2] = draw_out_;
      d.p = draw->p;
      device_->run(d);
    }
    device_->synchronize();
    if (draw != nullptr) device_->copy_out(draw_out_.buf, 0, &draw->token, sizeof(int32_t));
  }
  softcap_logits(dst, rows);  // over the rows this call returns (no device draw then)
  if (all_logits) {
    std::memcpy(last_logits_.data(), dst + (rows - 1) * c.n_vocab, row_b);
  } else if (logits_out != nullptr) {
    std::memcpy(logits_out, last_logits_.data(), row_b);
  }
}

void Engine::softcap_logits(float* rows, int64_t n_rows) const {
  if (cfg_.final_softcap <= 0.f) return;
  const float cap = cfg_.final_softcap;
  for (int64_t i = 0, m = n_rows * cfg_.n_vocab; i < m; ++i) rows[i] = cap * std::tanh(rows[i] / cap);
}

void Engine::forward(const int32_t* tokens, int64_t n, int64_t start_pos, float* logits_out, bool all_logits,
                     DeviceDraw* draw) {
  check_open("engine.forward");
  BusyGuard guard(busy_);
  cancel_.store(false, std::memory_order_release);
  // Once per call (decode: once per token): no message is built unless a check fails.
  check(n > 0, ErrorCode::kInvalidArgument, "engine.forward", "tokens: expected at least one token, got 0");
  if (start_pos < 0)
    fail(ErrorCode::kInvalidArgument, "engine.forward", "start_pos: expected >= 0, got " + std::to_string(start_pos));
  if (start_pos + n > ctx_)
    fail(ErrorCode::kContextOverflow, "engine.forward",
         "context overflow: " + std::to_string(start_pos) + " cached + " + std::to_string(n) +
             " new tokens exceed context_length " + std::to_string(ctx_));
  for (int64_t i = 0; i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= cfg_.n_vocab)
      fail(ErrorCode::kInvalidArgument, "engine.forward",
           "token " + std::to_string(i) + ": expected an id in [0, " + std::to_string(cfg_.n_vocab) + "), got " +
               std::to_string(tokens[i]));
  for (int64_t done = 0; done < n; done += max_batch_) {
    const int64_t m = std::min(max_batch_, n - done);
    const bool last_chunk = done + m == n;
    float* out = nullptr;
    if (all_logits && logits_out != nullptr) out = logits_out + done * cfg_.n_vocab;
    batch(tokens + done, m, start_pos + done, all_logits ? out : (last_chunk ? logits_out : nullptr),
          all_logits && out != nullptr, all_logits || last_chunk, last_chunk && !all_logits ? draw : nullptr);
  }
}

int32_t Engine::decode(int32_t token, int64_t pos, Sampler& sampler) {
  if (sampler.n_vocab() != cfg_.n_vocab)
    fail(ErrorCode::kInvalidArgument, "engine.decode",
         "sampler vocabulary: expected " + std::to_string(cfg_.n_vocab) + ", got " + std::to_string(sampler.n_vocab()));
  // With nothing for the host sampler to apply, the device draws behind the head: greedy as an
  // argmax, a temperature draw with the uniform the host sampler would have used.
  const bool greedy = sampler.plain_greedy();
  if (draw_out_.valid() && (greedy || (sampler.plain_sampling() && device_->supports(OpCode::kSample, DType::kF32)))) {
    DeviceDraw d{greedy ? OpCode::kArgmax : OpCode::kSample};
    d.p.n_tokens = 1;
    double u = 0.0;  // greedy draws no uniform
    if (!greedy) {
      const SamplerParams& sp = sampler.params();
      u = sampler.take_uniform();
      d.p.scale = 1.f / sp.temperature;  // the CPU sampler's float inverse
      d.p.top_k = sp.top_k;
      d.p.top_p = sp.top_p;
      d.p.min_p = sp.min_p;
      d.p.uniform = static_cast<float>(u);
    }
    forward(&token, 1, pos, nullptr, false, &d);
    sampler.accept(token);
    if (d.token >= 0 && d.token < cfg_.n_vocab) {
      sampler.note_device_draw();
      return d.token;
    }
    // -1: no logit above -inf (sample() names the error); -2: the kernels cannot draw this one
    // exactly. The host draws from the same logits with the same uniform.
    return sampler.sample_with_uniform(last_logits_.data(), u);
  }
  forward(&token, 1, pos, nullptr, false);
  sampler.accept(token);
  return sampler.sample(last_logits_.data());
}

}  // namespace metallic
