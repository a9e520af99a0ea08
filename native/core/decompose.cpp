// decompose (core/device.h): the unfused meaning of kNormMatMul and kNormSwiGlu, shared by every
// device that runs a fused op (or part of one) as plain ops.
#include <string>

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

}  // namespace

void decompose(const OpCall& c, void (*run)(void* ctx, const OpCall& op), void* ctx) {
  switch (c.op) {
    case OpCode::kNormMatMul: {
      check(c.p.n_weights >= 1 && c.p.n_weights <= 3, ErrorCode::kInvalidArgument, "decompose",
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
    case OpCode::kEmbed:
    case OpCode::kRmsNorm:
    case OpCode::kMatMul:
    case OpCode::kRopeKv:
    case OpCode::kAttention:
    case OpCode::kSwiGlu:
    case OpCode::kArgmax:
    case OpCode::kSample: run(ctx, c); return;
  }
  fail(ErrorCode::kKernelFailure, "decompose", "unknown op");
}

}  // namespace metallic
