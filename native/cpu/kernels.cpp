// CPU op kernels. Where the time goes in decode: op_matmul (weights streamed once per token,
// ~95%), then op_attention (KV streamed once per head group). Prefill reuses each weight row for
// every token of the batch while it is in L1.
#include "cpu/kernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "cpu/arch/x86_act.h"
#include "cpu/arch/x86_attn.h"
#include "cpu/quantize.h"
#include "cpu/quants.h"
#include "cpu/repack.h"
#include "cpu/tile.h"

namespace metallic::cpu {

void f32_row_to_f16(const float* x, int64_t n, uint16_t* d) {
  static const F32ToF16Fn simd = f32_to_f16_fn();
  for (int64_t i = simd != nullptr ? simd(x, n, d) : 0; i < n; ++i) d[i] = f32_to_fp16(x[i]);
}

namespace {

inline float silu(float x) { return x / (1.f + std::exp(-x)); }
// GELU, tanh approximation (HF "gelu_pytorch_tanh", ggml's gelu).
inline float gelu_tanh(float x) {
  constexpr float kSqrt2OverPi = 0.7978845608028654f;
  return 0.5f * x * (1.f + std::tanh(kSqrt2OverPi * (x + 0.044715f * x * x * x)));
}

// Sum of x[i]^2 in eight interleaved partial sums (lane i % 8, so the loop vectorizes without
// reassociation), then added pairwise in a fixed order: the same value for a row whatever the
// batch, and a shorter rounding chain than one serial sum.
inline float sum_squares(const float* x, int64_t n) {
  float p[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) p[j] += x[i + j] * x[i + j];
  for (; i < n; ++i) p[i % 8] += x[i] * x[i];
  return ((p[0] + p[4]) + (p[2] + p[6])) + ((p[1] + p[5]) + (p[3] + p[7]));
}

// One K or V row of n floats into the cache in its dtype (the device checked it is a KV type:
// cpu_device.cpp check_kv): f16 rounds to nearest even, Q8_0 / Q4_0 quantize per block of 32 with
// GGML's reference rounding (cpu/quantize.h), so every row is quantized once, as it is written.
void store_kv_row(DType dt, const float* x, int n, void* dst) {
  switch (dt) {
    case DType::kF32: std::memcpy(dst, x, static_cast<size_t>(n) * sizeof(float)); return;
    case DType::kF16: f32_row_to_f16(x, n, static_cast<uint16_t*>(dst)); return;
    case DType::kQ8_0:
    case DType::kQ4_0: quantize_row_f32(dt, x, n, dst); return;
    case DType::kBF16:
    case DType::kQ4_1:
    case DType::kQ5_0:
    case DType::kQ5_1:
    case DType::kQ4_K:
    case DType::kQ5_K:
    case DType::kQ6_K: return;  // not a KV-cache type: refused before the kernel runs
  }
}

// SoftmaxFn's steps with std::exp and a serial sum (builds without the AVX2 kernel).
void softmax_scalar(float* s, int64_t n, float scale, float softcap) {
  float mx = -INFINITY;
  for (int64_t i = 0; i < n; ++i) {
    s[i] *= scale;
    if (softcap > 0.f) s[i] = softcap * std::tanh(s[i] / softcap);
    mx = std::max(mx, s[i]);
  }
  float sum = 0.f;
  for (int64_t i = 0; i < n; ++i) {
    s[i] = std::exp(s[i] - mx);
    sum += s[i];
  }
  const float inv = 1.f / sum;
  for (int64_t i = 0; i < n; ++i) s[i] *= inv;
}

}  // namespace

void op_embed(const OpCall& c, ThreadPool& pool) {
  const Tensor& table = c.t[0];
  const auto* tokens = c.t[1].ptr<const int32_t>();
  const Tensor& out = c.t[2];
  const RowToF32Fn to_f32 = cpu_traits(table.dtype).to_f32;
  const float scale = c.p.scale;
  const bool interleaved = table.layout == Layout::kInterleaved8;
  const int64_t grouped = table.rows / 8 * 8;
  pool.parallel_for(c.p.n_tokens, [&](int64_t b, int64_t e, int) {
    for (int64_t t = b; t < e; ++t) {
      float* o = out.ptr<float>() + t * out.cols;
      const int64_t r = tokens[t];
      if (!interleaved) {
        to_f32(table.cols, table.row(r), o);
      } else if (r < grouped) {
        interleaved_row_to_f32(table, r, o);
      } else {
        to_f32(table.cols, interleaved_tail_row(table, r), o);
      }
      if (scale != 1.f)
        for (int64_t i = 0; i < out.cols; ++i) o[i] *= scale;
    }
  });
}

void op_rms_norm(const OpCall& c, ThreadPool& pool) {
  const Tensor& x = c.t[0];
  const float* w = c.t[1].ptr<const float>();
  const Tensor& out = c.t[2];
  const int64_t n = x.cols;
  const float eps = c.p.eps;
  const bool acc = c.p.accumulate;
  auto body = [&](int64_t b, int64_t e, int) {
    for (int64_t t = b; t < e; ++t) {
      const float* xi = x.ptr<const float>() + t * n;
      float* o = out.ptr<float>() + t * n;
      float ss = sum_squares(xi, n);
      const float r = 1.f / std::sqrt(ss / static_cast<float>(n) + eps);
      if (acc) {
        for (int64_t i = 0; i < n; ++i) o[i] += xi[i] * r * w[i];
      } else {
        for (int64_t i = 0; i < n; ++i) o[i] = xi[i] * r * w[i];
      }
    }
  };
  if (c.p.n_tokens < 4) {
    body(0, c.p.n_tokens, 0);  // one row: a pool hand-off costs more than the work
  } else {
    pool.parallel_for(c.p.n_tokens, body);
  }
}

// Weights repacked into 8-row groups (cpu/repack.h): parallel over groups (and tail rows) of
// all weights of the call; each group computes its 8 rows for every token.
static void matmul_interleaved(const OpCall& c, ThreadPool& pool, Scratch& s, const CpuTypeTraits& tr) {
  const int64_t nt = c.p.n_tokens;
  const int64_t cols = c.t[0].cols;
  const int64_t nb = cols / 32;
  const int nw = c.p.n_weights;
  const DotX8Fn fn = dot_x8_fn(c.t[1].dtype);
  int64_t base[4] = {0, 0, 0, 0};  // unit = one group of 8 rows or one tail row
  for (int i = 0; i < nw; ++i) base[i + 1] = base[i] + c.t[1 + i].rows / 8 + c.t[1 + i].rows % 8;
  const bool tiled = nt > 1;  // filled by op_matmul; one token's tile is its row
  const ActRows a{s.act_q.data(),
                  s.act_d.data(),
                  s.act_s.data(),
                  nt,
                  tiled ? s.act_qt.data() : s.act_q.data(),
                  tiled ? s.act_dt.data() : s.act_d.data(),
                  tiled ? s.act_st.data() : s.act_s.data()};
  const bool acc = c.p.accumulate;
  const AmxGroupsFn tiles =
      s.amx_min_tokens > 0 && nt >= s.amx_min_tokens ? amx_groups_fn(c.t[1].dtype, s.amx_backend) : nullptr;
  pool.parallel_for(
      base[nw],
      [&](int64_t b, int64_t e, int thread) {
        for (int wi = 0; wi < nw; ++wi) {
          const Tensor& w = c.t[1 + wi];
          const float* bias = c.t[4 + wi].valid() ? c.t[4 + wi].ptr<const float>() : nullptr;
          const Tensor& out = c.t[7 + wi];
          const int64_t groups = w.rows / 8;
          int64_t u0 = std::max(b, base[wi]) - base[wi];
          const int64_t u1 = std::min(e, base[wi + 1]) - base[wi];
          const char* w_groups = static_cast<const char*>(w.buf.host) + w.offset;
          auto add_bias = [&](int64_t r0, int64_t r1) {  // rows [r0, r1) of every token, after the dot
            if (bias != nullptr)
              for (int64_t t = 0; t < nt; ++t)
                for (int64_t r = r0; r < r1; ++r) out.ptr<float>()[t * out.cols + r] += bias[r];
          };
          if (tiles != nullptr && u0 < std::min(u1, groups)) {  // this range's groups on the AMX tiles
            const int64_t g1 = std::min(u1, groups);
            tiles(cols, w_groups, w.group_stride, u0, g1, a, out.ptr<float>(), out.cols, acc,
                  s.amx_thread_scratch(thread));
            add_bias(8 * u0, 8 * g1);
            u0 = g1;
          }
          for (int64_t u = u0; u < u1; ++u) {
            const int64_t r0 = u < groups ? 8 * u : 8 * groups + (u - groups);
            float* o = out.ptr<float>() + r0;
            if (u < groups) {
              fn(cols, w_groups + static_cast<size_t>(u) * w.group_stride, a, o, out.cols, acc);
              add_bias(r0, r0 + 8);
              continue;
            }
            const void* row = interleaved_tail_row(w, r0);
            for (int64_t t = 0; t < nt; ++t) {
              const float v =
                  tr.dot_q8(cols, row, ActQ8{a.q + t * cols, a.d + t * nb, a.s + t * nb}) + (bias ? bias[r0] : 0.f);
              o[t * out.cols] = acc ? o[t * out.cols] + v : v;
            }
          }
        }
      },
      2);
}

void op_matmul(const OpCall& c, ThreadPool& pool, Scratch& s) {
  const Tensor& x = c.t[0];
  const int64_t nt = c.p.n_tokens;
  const int64_t cols = x.cols;
  const int nw = c.p.n_weights;
  const CpuTypeTraits& tr = cpu_traits(c.t[1].dtype);  // all weights of one call share a dtype
  int64_t rows_total = 0;
  int64_t row_base[4] = {0, 0, 0, 0};
  for (int i = 0; i < nw; ++i) {
    rows_total += c.t[1 + i].rows;
    row_base[i + 1] = rows_total;
  }
  const int64_t nb = cols / 32;
  if (tr.act_q8) {
    const QuantizeActFn quant = quantize_act_fn();
    int8_t* q = s.act_q.data();
    float* d = s.act_d.data();
    float* sm = s.act_s.data();
    // Multi-token calls also get the tile layout (ActRows) where something reads it: the bytes
    // and scales for the interleaved kernels, the scales for the row-major tile kernels (whole
    // tiles of 8 tokens).
    const bool interleaved = c.t[1].layout == Layout::kInterleaved8;
    const bool tiled = nt > 1 && (interleaved || nt >= kTile);
    int8_t* qt = interleaved ? s.act_qt.data() : nullptr;
    auto qbody = [&](int64_t b, int64_t e, int) {
      for (int64_t t = b; t < e; ++t) {
        quant(x.ptr<const float>() + t * cols, cols, q + t * cols, d + t * nb, sm + t * nb);
        if (tiled) tile_token(t, cols, q + t * cols, d + t * nb, sm + t * nb, qt, s.act_dt.data(), s.act_st.data());
      }
    };
    if (nt < 8) {
      qbody(0, nt, 0);
    } else {
      pool.parallel_for(nt, qbody);
    }
  }
  if (c.t[1].layout == Layout::kInterleaved8) {
    matmul_interleaved(c, pool, s, tr);
    return;
  }
  // Prefill: the tile kernels read the tiled scales (full tiles: [block][token] per 8 tokens).
  const DotQ8x8Fn tile_fn = tr.act_q8 && nt >= kTile ? dot_q8_x8_fn(c.t[1].dtype) : nullptr;
  const int64_t n_tiles = tile_fn != nullptr ? nt / kTile : 0;
  const bool acc = c.p.accumulate;
  if (nt == 1 && tr.act_q8) {  // decode: a tight loop per weight over this thread's rows
    const ActQ8 a{s.act_q.data(), s.act_d.data(), s.act_s.data()};
    pool.parallel_for(
        rows_total,
        [&](int64_t b, int64_t e, int) {
          for (int wi = 0; wi < nw; ++wi) {
            const int64_t r0 = std::max(b, row_base[wi]) - row_base[wi];
            const int64_t r1 = std::min(e, row_base[wi + 1]) - row_base[wi];
            const Tensor& w = c.t[1 + wi];
            const float* bias = c.t[4 + wi].valid() ? c.t[4 + wi].ptr<const float>() : nullptr;
            float* o = c.t[7 + wi].ptr<float>();
            for (int64_t r = r0; r < r1; ++r) {
              const float v = tr.dot_q8(cols, w.row(r), a) + (bias != nullptr ? bias[r] : 0.f);
              o[r] = acc ? o[r] + v : v;
            }
          }
        },
        16);
    return;
  }
  pool.parallel_for(
      rows_total,
      [&](int64_t b, int64_t e, int) {
        for (int64_t r = b; r < e; ++r) {
          int wi = 0;
          while (r >= row_base[wi + 1]) ++wi;
          const Tensor& w = c.t[1 + wi];
          const Tensor& bias = c.t[4 + wi];
          const Tensor& out = c.t[7 + wi];
          const int64_t lr = r - row_base[wi];
          const void* wrow = w.row(lr);
          const float bv = bias.valid() ? bias.ptr<const float>()[lr] : 0.f;
          float* o = out.ptr<float>() + lr;
          auto store = [&](int64_t t, float v) {
            float* dst = o + t * out.cols;
            const float r = v + bv;
            *dst = acc ? *dst + r : r;
          };
          int64_t t = 0;
          if (tr.act_q8) {
            const int8_t* q = s.act_q.data();
            const float* d = s.act_d.data();
            const float* sm = s.act_s.data();
            for (int64_t i = 0; i < n_tiles; ++i, t += kTile) {  // prefill: 8 tokens per row pass
              const ActTile8 tile{q + t * cols, cols, s.act_dt.data() + i * nb * kTile,
                                  s.act_st.data() + i * nb * kTile};
              float v8[kTile];
              tile_fn(cols, wrow, tile, v8);
              for (int j = 0; j < kTile; ++j) store(t + j, v8[j]);
            }
            for (; t + 4 <= nt; t += 4) {  // then four tokens per pass
              const ActQ8 a4[4] = {{q + t * cols, d + t * nb, sm + t * nb},
                                   {q + (t + 1) * cols, d + (t + 1) * nb, sm + (t + 1) * nb},
                                   {q + (t + 2) * cols, d + (t + 2) * nb, sm + (t + 2) * nb},
                                   {q + (t + 3) * cols, d + (t + 3) * nb, sm + (t + 3) * nb}};
              float v4[4];
              tr.dot_q8_x4(cols, wrow, a4, v4);
              for (int j = 0; j < 4; ++j) store(t + j, v4[j]);
            }
            for (; t < nt; ++t) store(t, tr.dot_q8(cols, wrow, ActQ8{q + t * cols, d + t * nb, sm + t * nb}));
          } else {
            for (; t < nt; ++t) store(t, tr.dot_f32(cols, wrow, x.ptr<const float>() + t * cols));
          }
        }
      },
      16);
}

void op_rope_kv(const OpCall& c, ThreadPool& pool, Scratch& s) {
  const Tensor& q = c.t[0];
  const Tensor& k = c.t[1];
  const Tensor& v = c.t[2];
  const Tensor& kc = c.t[3];
  const Tensor& vc = c.t[4];
  const float* inv_freq = c.t[5].ptr<const float>();
  const int64_t nt = c.p.n_tokens;
  const int hd = c.p.head_dim;
  const int half = (c.p.rope_dim > 0 ? c.p.rope_dim : hd) / 2;  // partial rotary: the first dims
  const int nh = c.p.n_head;
  const int nkv = c.p.n_head_kv;
  const bool neox = c.p.neox;
  const double mscale = c.p.rope_mscale;  // longrope's attention factor on the rotated dims
  const TokenSlots at(c);                 // each token's position and slot (ragged batch) or pos0 + t
  float* cs = s.rope_cs.data();
  for (int64_t t = 0; t < nt; ++t) {  // angles in double: exact enough at long positions
    const double pos = static_cast<double>(at.pos(t));
    for (int i = 0; i < half; ++i) {
      const double a = pos * static_cast<double>(inv_freq[i]);
      cs[t * hd + i] = static_cast<float>(std::cos(a) * mscale);
      cs[t * hd + half + i] = static_cast<float>(std::sin(a) * mscale);
    }
  }
  auto rotate = [&](float* h, const float* cst) {
    for (int i = 0; i < half; ++i) {
      const int i0 = neox ? i : 2 * i;
      const int i1 = neox ? i + half : 2 * i + 1;
      const float x0 = h[i0], x1 = h[i1];
      const float co = cst[i], si = cst[half + i];
      h[i0] = x0 * co - x1 * si;
      h[i1] = x0 * si + x1 * co;
    }
  };
  const int64_t per_token = nh + nkv;
  auto body = [&](int64_t b, int64_t e, int) {
    for (int64_t job = b; job < e; ++job) {
      const int64_t t = job / per_token;
      const int64_t h = job % per_token;
      const float* cst = cs + t * hd;
      if (h < nh) {
        rotate(q.ptr<float>() + t * q.cols + h * hd, cst);
        continue;
      }
      const int64_t g = h - nh;
      float* kh = k.ptr<float>() + t * k.cols + g * hd;
      const float* vh = v.ptr<const float>() + t * v.cols + g * hd;
      rotate(kh, cst);
      const int64_t row = g * c.p.kv_capacity + at.pos(t) % c.p.kv_capacity;  // a ring wraps
      void* kdst = static_cast<char*>(const_cast<void*>(kc.row(row))) + at.kv_offset(t);
      void* vdst = static_cast<char*>(const_cast<void*>(vc.row(row))) + at.kv_offset(t);
      store_kv_row(kc.dtype, kh, hd, kdst);
      store_kv_row(kc.dtype, vh, hd, vdst);
    }
  };
  if (nt == 1) {
    body(0, per_token, 0);  // decode: a few hundred rotations, less than a pool hand-off
  } else {
    pool.parallel_for(nt * per_token, body);
  }
}

namespace {

// One token over a long context (decode) with grouped heads, in three passes split over the
// threads, so that each K and V row comes from memory once for its group's heads (a job per head
// reads it `group` times, from DRAM once the cache outgrows L2): the dots of blocks of positions
// (a block's rows stay in L1 / L2 while each head of the KV head takes them with the one-head
// kernels), each head's softmax, then P·V over slices of the output elements, a block of
// positions at a time for each head. Every dot, softmax and element sum takes the same steps as
// in op_attention's jobs, so the result is bit-identical (batch invariance holds).
// When: from Scratch::split_bytes of K rows per KV head (1 MiB, a typical L2), or from
// kSplitMinShared positions when there are fewer KV heads than threads (a job per head then has
// two threads read the same rows). Below, a job per head finds the rows the previous head of its
// group read still in L2, and the passes' extra hand-offs cost more. Measured on Zen 4 (1 MiB
// L2, 2 threads): SmolLM2 (3 KV heads, 128-byte rows) at 1k and 4k positions ran 10-15 % slower
// split; Gemma-3 (1 KV head, 512-byte rows) 10-20 % faster at 4k and 2.3x at 32k.
constexpr int64_t kSplitMinShared = 256;
constexpr int64_t kSplitBlock = 256;  // positions per dot job

struct SplitDecode {
  const Tensor &q, &kc, &vc, &out;
  const TokenSlots& at;
  int hd, nh, group;
  int64_t cap, lo, n;  // the ring's rows; the first position read and how many
  float scale, softcap;
  QuantizeActFn quant_q;
  decltype(F16HeadsFns::dot) fdot;
  decltype(QuantHeadsFns::dot) qdot;
  decltype(F16HeadsFns::pv) pv;
  SoftmaxFn softmax;
};

void split_decode(const SplitDecode& d, ThreadPool& pool, Scratch& s) {
  const int64_t cap = d.cap, hd = d.hd, group = d.group, n_kv = d.nh / d.group;
  const int64_t r0 = d.lo % cap;
  const char* kbase = static_cast<const char*>(d.kc.row(0)) + d.at.kv_offset(0);
  const char* vbase = static_cast<const char*>(d.vc.row(0)) + d.at.kv_offset(0);
  const float* qh = d.q.ptr<const float>();
  float* sc = s.split_scores.data();  // head h's scores at sc + h * cap
  const auto qnb = static_cast<int64_t>(hd / 32 + 1);
  // Positions [i0, i1) as runs of consecutive ring rows: f(position, row, count).
  auto runs = [&](int64_t i0, int64_t i1, auto&& f) {
    for (int64_t i = i0; i < i1;) {
      const int64_t r = (r0 + i) % cap;
      const int64_t k = std::min(i1 - i, cap - r);
      f(i, r, k);
      i += k;
    }
  };
  if (d.qdot != nullptr)
    for (int h = 0; h < d.nh; ++h)
      d.quant_q(qh + h * hd, hd, s.split_q.data() + h * hd, s.split_qd.data() + h * qnb, s.split_qs.data() + h * qnb);
  const int64_t blocks = (d.n + kSplitBlock - 1) / kSplitBlock;
  pool.parallel_for(n_kv * blocks, [&](int64_t b, int64_t e, int) {
    for (int64_t job = b; job < e; ++job) {
      const int64_t g = job / blocks, i0 = job % blocks * kSplitBlock;
      runs(i0, std::min(d.n, i0 + kSplitBlock), [&](int64_t i, int64_t r, int64_t k) {
        const char* rows = kbase + static_cast<size_t>(g * cap + r) * d.kc.row_stride;
        const auto stride = static_cast<int64_t>(d.kc.row_stride);
        for (int64_t h = g * group; h < (g + 1) * group; ++h) {  // the block's rows stay in L1 / L2
          if (d.qdot != nullptr) {
            const QHeads qh8{s.split_q.data() + h * hd, s.split_qd.data() + h * qnb, s.split_qs.data() + h * qnb, qnb};
            d.qdot(hd, k, rows, stride, qh8, 1, sc + h * cap + i, cap);
          } else {
            d.fdot(hd, k, rows, stride, qh + h * hd, hd, 1, sc + h * cap + i, cap);
          }
        }
      });
    }
  });
  pool.parallel_for(d.nh, [&](int64_t b, int64_t e, int) {
    for (int64_t h = b; h < e; ++h) d.softmax(sc + h * cap, d.n, d.scale, d.softcap);
  });
  float* o = d.out.ptr<float>();
  std::fill(o, o + d.nh * hd, 0.f);
  const int64_t slice = hd % 32 == 0 ? 32 : 16;  // whole blocks of a quantized V
  const int64_t slices = hd / slice;
  pool.parallel_for(n_kv * slices, [&](int64_t b, int64_t e, int) {
    for (int64_t job = b; job < e; ++job) {
      const int64_t g = job / slices, e0 = job % slices * slice;
      const size_t skip = row_bytes(d.vc.dtype, e0);     // bytes of a V row before the slice
      for (int64_t p0 = 0; p0 < d.n; p0 += kSplitBlock)  // positions in order, a block at a time
        runs(p0, std::min(d.n, p0 + kSplitBlock), [&](int64_t i, int64_t r, int64_t k) {
          const char* rows = vbase + static_cast<size_t>(g * cap + r) * d.vc.row_stride + skip;
          for (int64_t h = g * group; h < (g + 1) * group; ++h)
            d.pv(slice, k, sc + h * cap + i, cap, 1, rows, static_cast<int64_t>(d.vc.row_stride), o + h * hd + e0, hd);
        });
    }
  });
}

}  // namespace

// Batch invariance: a head's float steps depend only on its position and window, so a token's
// attention is bit-identical in decode and in any prefill batch. With an f16 cache and AVX2 the
// grouped kernels (cpu/arch/x86_attn.h) run: in prefill one job takes the `group` query heads
// of one KV head, converting each cache row once for all of them; in decode one job per head
// (the heads spread over threads). Per head the kernels' arithmetic is the same either way.
// A quantized cache (Q8_0, Q4_0) groups its heads the same way (x86_attn_q.cpp): each query head
// quantized once to q8 blocks, integer K dots (cpu_traits().dot_q8's steps), V rows dequantized
// into the f32 accumulator in position order (axpy's steps), so it is batch-invariant too.
void op_attention(const OpCall& c, ThreadPool& pool, Scratch& s) {
  const Tensor& q = c.t[0];
  const Tensor& kc = c.t[1];
  const Tensor& vc = c.t[2];
  const Tensor& out = c.t[3];
  const int64_t nt = c.p.n_tokens;
  const int hd = c.p.head_dim;
  const int nh = c.p.n_head;
  const int group = nh / c.p.n_head_kv;
  const float scale = c.p.scale;
  const int64_t cap = c.p.kv_capacity;
  const int64_t window = c.p.window;
  const float softcap = c.p.softcap;
  const CpuTypeTraits& ktr = cpu_traits(kc.dtype);
  const DotF32Fn kdot = ktr.dot_f32;
  // A quantized K cache (Q8_0, Q4_0): each query head is quantized once to q8 blocks and dotted
  // with the K rows in integer arithmetic, as llama.cpp's CPU backend pairs q8_0 activations with
  // a quantized K (vec_dot_type); V rows are dequantized on the fly into the f32 accumulator.
  const DotQ8Fn kdot_q8 = ktr.act_q8 ? ktr.dot_q8 : nullptr;
  const QuantizeActFn quant_q = quantize_act_fn();
  const AxpyFn vaxpy = cpu_traits(vc.dtype).axpy;
  if ((kdot == nullptr && kdot_q8 == nullptr) || vaxpy == nullptr)
    fail(ErrorCode::kUnsupportedDType, "attention",
         std::string("KV cache ") + dtype_name(kc.dtype) + "/" + dtype_name(vc.dtype) + ": no CPU attention kernels");
  const F16HeadsFns hf =
      kc.dtype == DType::kF16 && vc.dtype == DType::kF16 && hd % 16 == 0 ? f16_heads_fns() : F16HeadsFns{};
  const QuantHeadsFns qf = kc.dtype == vc.dtype ? quant_heads_fns(kc.dtype) : QuantHeadsFns{};
  const auto pv = hf.pv != nullptr ? hf.pv : qf.pv;  // the grouped V kernels (same signature), or null
  const SoftmaxFn simd_softmax = softmax_fn();
  const SoftmaxFn softmax = simd_softmax != nullptr ? simd_softmax : softmax_scalar;
  // Query heads per job: in prefill the heads of one KV head share each cache row (f16 and
  // quantized caches), in decode one head per job (they spread over the threads).
  const int per_job = (hf.dot != nullptr || kdot_q8 != nullptr) && nt > 1 ? group : 1;
  check(per_job <= s.max_group && per_job * (cap + hd) <= s.scores_stride, ErrorCode::kKernelFailure, "attention",
        "scores scratch: sized for fewer query heads per KV head or a smaller cache");
  const size_t qnb = static_cast<size_t>(hd / 32 + 1);  // scales per query head (+1: sized for any head_dim)
  check(kdot_q8 == nullptr || s.attn_q.size() >= static_cast<size_t>(pool.size() * per_job) * static_cast<size_t>(hd),
        ErrorCode::kKernelFailure, "attention", "query scratch: sized for a smaller head_dim or group");
  const int64_t jobs_per_token = nh / per_job;
  const TokenSlots at(c);  // each token's position and slot (ragged batch) or pos0 + t
  if (nt == 1 && group > 1 && pool.size() > 1 && pv != nullptr && (hf.dot != nullptr || qf.dot != nullptr) &&
      hd % 16 == 0 && static_cast<size_t>(nh) * static_cast<size_t>(cap) <= s.split_scores.size() &&
      static_cast<size_t>(nh) * static_cast<size_t>(hd) <= s.split_q.size()) {
    const int64_t n_ctx = at.pos(0) + 1;
    const int64_t lo = window > 0 ? std::max<int64_t>(0, n_ctx - window) : 0;
    const int64_t n = n_ctx - lo;
    const bool shared = nh / group < pool.size() && n >= kSplitMinShared;  // threads would share a KV head
    if (shared || static_cast<int64_t>(static_cast<size_t>(n) * kc.row_stride) >= s.split_bytes) {
      const SplitDecode d{q,  kc,         vc,    out,     at,      hd,     nh,     group, cap,
                          lo, n_ctx - lo, scale, softcap, quant_q, hf.dot, qf.dot, pv,    softmax};
      split_decode(d, pool, s);
      return;
    }
  }
  auto body = [&](int64_t b, int64_t e, int tid) {
    // Per head: scores (cap), then per head the output accumulator (hd).
    float* scores = s.scores.data() + static_cast<size_t>(tid) * static_cast<size_t>(s.scores_stride);
    float* acc = scores + per_job * cap;
    // The job's query heads as q8 blocks (a quantized K cache): head j at qa(j).
    int8_t* qq = s.attn_q.data() + static_cast<size_t>(tid * per_job) * static_cast<size_t>(hd);
    float* qd = s.attn_qd.data() + static_cast<size_t>(tid * per_job) * qnb;
    float* qsum = s.attn_qs.data() + static_cast<size_t>(tid * per_job) * qnb;
    // Head j as one ActQ8 (the per-row fallback of builds without the grouped kernels).
    auto qa = [&](int j) { return ActQ8{qq + static_cast<size_t>(j * hd), qd + j * qnb, qsum + j * qnb}; };
    for (int64_t job = b; job < e; ++job) {
      // Tokens in the order 0, nt - 1, 1, nt - 2, ..: a causal token's cost grows with its
      // position, so every contiguous range of jobs (a thread's share) gets a balanced mix.
      const int64_t k = job / jobs_per_token;
      const int64_t t = k % 2 == 0 ? k / 2 : nt - 1 - k / 2;
      const int h0 = static_cast<int>(job % jobs_per_token) * per_job;
      const int64_t g = h0 / group;
      const char* kbase = static_cast<const char*>(kc.row(0)) + at.kv_offset(t);  // the token's slot
      const char* vbase = static_cast<const char*>(vc.row(0)) + at.kv_offset(t);
      auto krow = [&](int64_t r) { return kbase + static_cast<size_t>(r) * kc.row_stride; };
      auto vrow = [&](int64_t r) { return vbase + static_cast<size_t>(r) * vc.row_stride; };
      const int64_t n_ctx = at.pos(t) + 1;                                       // causal: positions 0..pos
      const int64_t lo = window > 0 ? std::max<int64_t>(0, n_ctx - window) : 0;  // sliding window
      const int64_t n = n_ctx - lo;  // <= cap (kv_positions_ok): scores[i] is position lo + i
      const int64_t r0 = lo % cap;   // its row; a ring wraps once, at row cap
      const float* qh = q.ptr<const float>() + t * q.cols + h0 * hd;
      if (kdot_q8 != nullptr)  // each head quantized once for all its keys
        for (int j = 0; j < per_job; ++j)
          quant_q(qh + j * hd, hd, qq + static_cast<size_t>(j * hd), qd + j * qnb, qsum + j * qnb);
      // The raw dots of the ring's rows, r0.. then 0.. (a wrap): scores[j * cap + i] is head j's
      // dot with position lo + i.
      const int64_t first = std::min(n, cap - r0);
      const auto kstride = static_cast<int64_t>(kc.row_stride);
      if (qf.dot != nullptr) {
        const QHeads qh8{qq, qd, qsum, static_cast<int64_t>(qnb)};
        qf.dot(hd, first, krow(g * cap + r0), kstride, qh8, per_job, scores, cap);
        if (first < n) qf.dot(hd, n - first, krow(g * cap), kstride, qh8, per_job, scores + first, cap);
      } else if (hf.dot != nullptr) {
        hf.dot(hd, first, krow(g * cap + r0), kstride, qh, hd, per_job, scores, cap);
        if (first < n) hf.dot(hd, n - first, krow(g * cap), kstride, qh, hd, per_job, scores + first, cap);
      } else {
        for (int64_t i = 0, r = r0; i < n; ++i, r = r + 1 == cap ? 0 : r + 1)
          for (int j = 0; j < per_job; ++j)
            scores[j * cap + i] =
                kdot_q8 != nullptr ? kdot_q8(hd, krow(g * cap + r), qa(j)) : kdot(hd, krow(g * cap + r), qh + j * hd);
      }
      for (int j = 0; j < per_job; ++j) softmax(scores + j * cap, n, scale, softcap);
      std::fill(acc, acc + per_job * hd, 0.f);
      if (pv != nullptr) {  // the ring's rows in one or two runs
        const auto vstride = static_cast<int64_t>(vc.row_stride);
        pv(hd, first, scores, cap, per_job, vrow(g * cap + r0), vstride, acc, hd);
        if (first < n) pv(hd, n - first, scores + first, cap, per_job, vrow(g * cap), vstride, acc, hd);
      } else {  // each V row once for the job's heads, every head adding its positions in order
        for (int64_t i = 0, r = r0; i < n; ++i, r = r + 1 == cap ? 0 : r + 1) {
          const void* vr = vrow(g * cap + r);
          for (int j = 0; j < per_job; ++j) vaxpy(hd, scores[j * cap + i], vr, acc + j * hd);
        }
      }
      std::memcpy(out.ptr<float>() + t * out.cols + h0 * hd, acc, static_cast<size_t>(per_job * hd) * sizeof(float));
    }
  };
  // Work ~ heads x positions x head_dim; below ~64K multiply-adds a hand-off costs more than it saves.
  int64_t span = 0;  // keys the batch's queries read, summed (a plain call: its last token's, per token)
  if (at.table == nullptr) {
    span = nt * std::min(c.p.pos0 + nt, cap);
  } else {
    for (int64_t t = 0; t < nt; ++t) span += std::min(at.pos(t) + 1, cap);
  }
  const int64_t work = nh * span * hd;
  if (work < (int64_t{1} << 16)) {
    body(0, nt * jobs_per_token, 0);
  } else {
    pool.parallel_for(nt * jobs_per_token, body);
  }
}

void op_swiglu(const OpCall& c, ThreadPool& pool) {
  const Tensor& g = c.t[0];
  const Tensor& u = c.t[1];
  const int64_t n = c.p.n_tokens * g.cols;
  float* gp = g.ptr<float>();
  const float* up = u.ptr<const float>();
  const bool gelu = c.p.gelu;
  const GateFn simd = gate_fn(gelu);
  auto body = [&](int64_t b, int64_t e, int) {
    if (simd != nullptr) {
      simd(e - b, gp + b, up + b);
    } else if (gelu) {
      for (int64_t i = b; i < e; ++i) gp[i] = gelu_tanh(gp[i]) * up[i];
    } else {
      for (int64_t i = b; i < e; ++i) gp[i] = silu(gp[i]) * up[i];
    }
  };
  if (n < 8192) {
    body(0, n, 0);
  } else {
    pool.parallel_for(n, body, 64);
  }
}

}  // namespace metallic::cpu
