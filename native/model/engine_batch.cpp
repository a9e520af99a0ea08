// forward_batch: a ragged batch of several slots' tokens in one pass (continuous batching).
#include <string>

#include "model/engine.h"
#include "model/engine_internal.h"

namespace metallic {

using detail::BusyGuard;
using detail::row_view;

int64_t Engine::forward_batch(const int32_t* tokens, int64_t n_tokens, const Segment* segs, int64_t n_segs,
                              float* logits_out, int64_t logits_rows) {
  const char* where = "engine.forward_batch";
  check_open(where);
  BusyGuard guard(busy_);
  cancel_.store(false, std::memory_order_release);
  if (n_segs < 1 || n_segs > n_seq_)
    fail(ErrorCode::kInvalidArgument, where,
         "segments: expected 1.." + std::to_string(n_seq_) + " (one per slot), got " + std::to_string(n_segs));
  int64_t total = 0;
  int64_t want_rows = 0;
  for (int64_t i = 0; i < n_segs; ++i) {
    const Segment& s = segs[i];
    auto seg = [i] { return "segment " + std::to_string(i); };  // built only for a message
    check_slot(s.slot, where);
    for (int64_t j = 0; j < i; ++j)
      if (segs[j].slot == s.slot)
        fail(ErrorCode::kInvalidArgument, where,
             seg() + ": slot " + std::to_string(s.slot) + " already has segment " + std::to_string(j));
    if (s.n < 1) fail(ErrorCode::kInvalidArgument, where, seg() + ": n: expected >= 1, got " + std::to_string(s.n));
    if (s.logits < 0 || s.logits > s.n)
      fail(ErrorCode::kInvalidArgument, where,
           seg() + ": logits: expected 0.." + std::to_string(s.n) + " rows, got " + std::to_string(s.logits));
    want_rows += s.logits;
    if (s.pos0 < 0)
      fail(ErrorCode::kInvalidArgument, where, seg() + ": pos0: expected >= 0, got " + std::to_string(s.pos0));
    if (s.pos0 + s.n > ctx_)
      fail(ErrorCode::kContextOverflow, where,
           seg() + ": context overflow: " + std::to_string(s.pos0) + " cached + " + std::to_string(s.n) +
               " new tokens exceed context_length " + std::to_string(ctx_));
    total += s.n;
  }
  if (total != n_tokens)
    fail(ErrorCode::kInvalidArgument, where,
         "tokens: expected " + std::to_string(total) + " (the segments' sum), got " + std::to_string(n_tokens));
  if (total > max_batch_)
    fail(ErrorCode::kInvalidArgument, where,
         "tokens: expected at most batch_size " + std::to_string(max_batch_) + ", got " + std::to_string(total));
  const int64_t cap_rows = logits_out != nullptr ? logits_rows : n_seq_;
  if (want_rows > cap_rows)
    fail(ErrorCode::kInvalidArgument, where,
         "logits: the segments want " + std::to_string(want_rows) + " rows, the output holds " +
             std::to_string(cap_rows));
  for (int64_t i = 0; i < n_tokens; ++i)
    if (tokens[i] < 0 || tokens[i] >= cfg_.n_vocab)
      fail(ErrorCode::kInvalidArgument, where,
           "token " + std::to_string(i) + ": expected an id in [0, " + std::to_string(cfg_.n_vocab) + "), got " +
               std::to_string(tokens[i]));

  layers(tokens, n_tokens, segs, n_segs);
  // Head over the last `logits` tokens of each segment: their normed rows gathered into rows
  // 0.. of xn_, then one matmul of those rows into the logits.
  int64_t rows = 0;
  int64_t at = 0;
  for (int64_t i = 0; i < n_segs; ++i) {
    at += segs[i].n;
    if (segs[i].logits == 0) continue;
    OpCall norm{OpCode::kRmsNorm};
    norm.t[0] = row_view(x_, at - segs[i].logits, segs[i].logits);
    norm.t[1] = output_norm_;
    norm.t[2] = row_view(xn_, rows, segs[i].logits);
    norm.p.n_tokens = segs[i].logits;
    norm.p.eps = cfg_.rms_eps;
    device_->run(norm);
    rows += segs[i].logits;
  }
  float* dst = logits_out != nullptr ? logits_out : batch_logits_.data();
  if (rows > 0) {
    const size_t row_b = static_cast<size_t>(cfg_.n_vocab) * sizeof(float);
    if (logits_out != nullptr) {  // the caller's rows, wrapped for this call only
      struct Wrapped {            // released on every path, errors included
        Device& dev;
        Buffer buf;
        ~Wrapped() { dev.release(buf); }
      } w{*device_, device_->wrap_host(logits_out, row_b * static_cast<size_t>(rows))};
      const Tensor out{w.buf, 0, DType::kF32, rows, cfg_.n_vocab, row_b};
      matmul(xn_, rows, {{&output_, nullptr}}, {&out}, false);
      device_->synchronize();
    } else {
      const Tensor out = row_view(batch_logits_t_, 0, rows);
      matmul(xn_, rows, {{&output_, nullptr}}, {&out}, false);
    }
  }
  device_->synchronize();
  softcap_logits(dst, rows);
  return rows;
}

void Engine::sample_rows(Sampler* const* samplers, const float* logits, int64_t n_rows, const int64_t* rows, int64_t k,
                         int32_t* out, std::exception_ptr* errors) {
  const char* where = "engine.sample_rows";
  check_open(where);
  BusyGuard guard(busy_);  // the device's host threads are the forward's
  if (k < 0 || k > kMaxSeq)
    fail(ErrorCode::kInvalidArgument, where,
         "samplers: expected 0.." + std::to_string(kMaxSeq) + ", got " + std::to_string(k));
  for (int64_t i = 0; i < k; ++i) {
    if (samplers[i] == nullptr || samplers[i]->n_vocab() != cfg_.n_vocab)
      fail(ErrorCode::kShapeMismatch, where,
           "sampler " + std::to_string(i) + ": expected one for n_vocab " + std::to_string(cfg_.n_vocab));
    if (rows[i] < 0 || rows[i] >= n_rows)
      fail(ErrorCode::kInvalidArgument, where,
           "rows[" + std::to_string(i) + "]: expected 0.." + std::to_string(n_rows - 1) + ", got " +
               std::to_string(rows[i]));
    for (int64_t j = 0; j < i; ++j)
      if (samplers[j] == samplers[i])
        fail(ErrorCode::kInvalidArgument, where,
             "sampler " + std::to_string(i) + " is also sampler " + std::to_string(j) + ": each draw needs its own");
  }
  struct Draws {
    Sampler* const* samplers;
    const float* logits;
    const int64_t* rows;
    int64_t n_vocab;
    int32_t* out;
    std::exception_ptr* errors;
  } d{samplers, logits, rows, cfg_.n_vocab, out, errors};
  device_->host_parallel(
      k,
      [](void* ctx, int64_t i) {
        auto& x = *static_cast<Draws*>(ctx);
        try {
          x.out[i] = x.samplers[i]->sample(x.logits + x.rows[i] * x.n_vocab);
          x.errors[i] = nullptr;
        } catch (...) {
          x.out[i] = -1;
          x.errors[i] = std::current_exception();
        }
      },
      &d);
}

}  // namespace metallic
