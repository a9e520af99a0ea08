// decompose (core/device.h): the unfused meaning of kNormMatMul and kNormSwiGlu, shared by every
// device that runs a fused op (or part of one) as plain ops.
#include <array>
#include <string>
#include <string_view>
#include <utility>

#include "core/device.h"
#include "core/error.h"

namespace metallic {

namespace {

// x and the norm weight through kRmsNorm into the xn scratch.
void norm_into_scratch(const OpCall& c, void (*run)(void*, const OpCall&), void* ctx) {
  OpCall norm{OpCode::kRmsNorm};
  norm.t[0] = c.t[0];
  norm.t[1] = c.t[11];
  norm.t[2] = c.t[10];
  norm.p.n_tokens = c.p.n_tokens;
  norm.p.eps = c.p.eps;
  run(ctx, norm);
}

// kMatMul calls over xn for the weights in slots [first, first + n), grouped by dtype and layout.
void matmuls(const OpCall& c, int first, int n, bool with_bias, void (*run)(void*, const OpCall&), void* ctx) {
  int i = first;
  while (i < first + n) {
    OpCall m{OpCode::kMatMul};
    m.t[0] = c.t[10];
    m.p.n_tokens = c.p.n_tokens;
    int k = 0;
    const Tensor& lead = c.t[1 + i];
    while (i < first + n && k < 3 && c.t[1 + i].dtype == lead.dtype && c.t[1 + i].layout == lead.layout) {
      m.t[1 + k] = c.t[1 + i];
      if (with_bias) m.t[4 + k] = c.t[4 + i];
      m.t[7 + k] = c.t[7 + i];
      ++k;
      ++i;
    }
    m.p.n_weights = k;
    run(ctx, m);
  }
}

// The caches of a rope/attention call: K and V views of slot 0.
std::pair<const Tensor*, const Tensor*> caches(const OpCall& c) {
  return c.op == OpCode::kRopeKv ? std::make_pair(&c.t[3], &c.t[4]) : std::make_pair(&c.t[1], &c.t[2]);
}

Tensor moved(const Tensor& t, size_t bytes) {
  Tensor v = t;
  v.offset += bytes;
  return v;
}

struct SplitCtx {
  const OpCall* call;
  void (*run)(void*, const OpCall&);
  void* ctx;
};

// One run of a ragged call as the plain call over its rows and its slot's caches.
void run_plain(void* vctx, int64_t first, int64_t n, int32_t slot, int64_t pos0) {
  const auto& sc = *static_cast<SplitCtx*>(vctx);
  const OpCall& c = *sc.call;
  OpCall p = c;
  const size_t off = static_cast<size_t>(slot) * c.p.kv_seq_stride;
  p.p.n_seqs = 0;
  p.p.kv_seq_stride = 0;
  p.p.pos0 = pos0;
  p.p.n_tokens = n;
  if (c.op == OpCode::kRopeKv) {
    for (int i = 0; i < 3; ++i) p.t[i] = row_view(c.t[i], first, n);
    p.t[3] = moved(c.t[3], off);
    p.t[4] = moved(c.t[4], off);
    p.t[6] = Tensor{};
  } else {
    p.t[0] = row_view(c.t[0], first, n);
    p.t[1] = moved(c.t[1], off);
    p.t[2] = moved(c.t[2], off);
    p.t[3] = row_view(c.t[3], first, n);
    p.t[4] = Tensor{};
  }
  sc.run(sc.ctx, p);
}

}  // namespace

TokenSlots::TokenSlots(const OpCall& c) {
  if (c.p.n_seqs > 0) {
    table = c.t[c.op == OpCode::kRopeKv ? 6 : 4].ptr<const int32_t>();
    stride = c.p.kv_seq_stride;
  } else {
    pos0 = c.p.pos0;
  }
}

void for_each_run(const OpCall& c, const char* where,
                  void (*f)(void* ctx, int64_t first, int64_t n, int32_t slot, int64_t pos0), void* ctx) {
  const OpParams& p = c.p;
  if (p.n_seqs == 0) {
    f(ctx, 0, p.n_tokens, 0, p.pos0);
    return;
  }
  // Called for every ragged rope / attention op: messages are built only when a check fails.
  const std::string_view op = c.op == OpCode::kRopeKv ? "rope_kv" : "attention";
  auto bad = [&](const std::string& what) { fail(ErrorCode::kInvalidArgument, where, std::string(op) + ": " + what); };
  const Tensor& tab = c.t[c.op == OpCode::kRopeKv ? 6 : 4];
  if (!(p.n_seqs >= 1 && p.n_seqs <= kMaxRaggedSeqs && p.n_tokens >= 1))
    bad("ragged call of " + std::to_string(p.n_tokens) + " tokens over " + std::to_string(p.n_seqs) +
        " slots: expected 1.." + std::to_string(kMaxRaggedSeqs) + " slots and >= 1 token");
  if (!(tab.valid() && tab.cols == 2 && tab.row_stride == 2 * sizeof(int32_t) && tab.rows >= p.n_tokens &&
        tab.offset + static_cast<size_t>(p.n_tokens) * tab.row_stride <= tab.buf.nbytes))
    bad("token table: expected (" + std::to_string(p.n_tokens) + ", 2) int32");
  const auto [kc, vc] = caches(c);
  const auto* t = tab.ptr<const int32_t>();
  std::array<bool, kMaxRaggedSeqs> seen{};
  for (int64_t i = 0; i < p.n_tokens;) {
    const int32_t slot = t[2 * i];
    const int64_t pos0 = t[2 * i + 1];
    int64_t n = 1;
    while (i + n < p.n_tokens && t[2 * (i + n)] == slot) {
      if (t[2 * (i + n) + 1] != pos0 + n)
        bad("token " + std::to_string(i + n) + " of slot " + std::to_string(slot) + ": expected position " +
            std::to_string(pos0 + n) + ", got " + std::to_string(t[2 * (i + n) + 1]));
      ++n;
    }
    if (!(slot >= 0 && slot < p.n_seqs && !seen[static_cast<size_t>(slot)]))
      bad("token " + std::to_string(i) + ": slot " + std::to_string(slot) + " out of range 0.." +
          std::to_string(p.n_seqs - 1) + " or not one run of consecutive tokens");
    seen[static_cast<size_t>(slot)] = true;
    const size_t off = static_cast<size_t>(slot) * p.kv_seq_stride;
    for (const Tensor* cache : {kc, vc})
      if (!(cache->valid() &&
            cache->offset + off + static_cast<size_t>(cache->rows) * cache->row_stride <= cache->buf.nbytes))
        bad("slot " + std::to_string(slot) + ": cache outside its buffer");
    OpParams run = p;
    run.pos0 = pos0;
    run.n_tokens = n;
    if (!kv_positions_ok(run))
      bad("slot " + std::to_string(slot) + ": positions " + std::to_string(pos0) + "+" + std::to_string(n) +
          " do not fit a KV cache of " + std::to_string(p.kv_capacity) + " rows (window " + std::to_string(p.window) +
          ")");
    f(ctx, i, n, slot, pos0);
    i += n;
  }
}

void decompose(const OpCall& c, void (*run)(void* ctx, const OpCall& op), void* ctx) {
  switch (c.op) {
    case OpCode::kNormMatMul: {
      if (c.p.n_weights < 1 || c.p.n_weights > 3)
        fail(ErrorCode::kInvalidArgument, "decompose",
             "norm_matmul: n_weights: expected 1..3, got " + std::to_string(c.p.n_weights));
      check(c.t[10].valid() && c.t[11].valid(), ErrorCode::kInvalidArgument, "decompose",
            "norm_matmul: expected the xn scratch and the norm weight");
      norm_into_scratch(c, run, ctx);
      matmuls(c, 0, c.p.n_weights, true, run, ctx);
      return;
    }
    case OpCode::kNormSwiGlu: {
      check(c.t[8].valid() && c.t[10].valid() && c.t[11].valid(), ErrorCode::kInvalidArgument, "decompose",
            "norm_swiglu: expected the up and xn scratch and the norm weight");
      norm_into_scratch(c, run, ctx);
      OpCall g = c;  // slots 1, 2 hold gate and up; outputs: gate → out (slot 7), up → scratch (8)
      g.t[4] = Tensor{};
      g.t[5] = Tensor{};
      matmuls(g, 0, 2, false, run, ctx);
      OpCall s{OpCode::kSwiGlu};
      s.t[0] = c.t[7];
      s.t[1] = c.t[8];
      s.p.n_tokens = c.p.n_tokens;
      s.p.gelu = c.p.gelu;
      run(ctx, s);
      return;
    }
    case OpCode::kRopeKv:
    case OpCode::kAttention: {
      if (c.p.n_seqs == 0) {
        run(ctx, c);
        return;
      }
      SplitCtx sc{&c, run, ctx};
      for_each_run(c, "decompose", run_plain, &sc);
      return;
    }
    case OpCode::kEmbed:
    case OpCode::kRmsNorm:
    case OpCode::kMatMul:
    case OpCode::kSwiGlu:
    case OpCode::kArgmax:
    case OpCode::kSample: run(ctx, c); return;
  }
  fail(ErrorCode::kKernelFailure, "decompose", "unknown op");
}

}  // namespace metallic
