// The Metal plan (plan.h): op → kernel launches, shared by the Metal and emulated-Metal devices.
#include "metal_plan/plan.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <string>

#include "core/error.h"
#include "shaders/args.h"

namespace metallic {

namespace {

// Weight formats the gemv / embed / fused kernels are instantiated for (shaders/*.metal), as an
// index into the kernel-name tables below; -1: not covered. The plan switches on dtype only here,
// in float_index and in kv_index (each exhaustive).
int fmt_index(DType t) {
  switch (t) {
    case DType::kF32: return 0;
    case DType::kF16: return 1;
    case DType::kBF16: return 2;
    case DType::kQ8_0: return 3;
    case DType::kQ4_0: return 4;
    case DType::kQ4_1: return 5;
    case DType::kQ5_0: return 6;
    case DType::kQ5_1: return 7;
    case DType::kQ4_K: return 8;
    case DType::kQ5_K: return 9;
    case DType::kQ6_K: return 10;
  }
  return -1;
}
#define METALLIC_FORMATS(prefix)                                                             \
  {prefix "f32",  prefix "f16",  prefix "bf16", prefix "q8_0", prefix "q4_0", prefix "q4_1", \
   prefix "q5_0", prefix "q5_1", prefix "q4_k", prefix "q5_k", prefix "q6_k"}
constexpr const char* kGemv[] = METALLIC_FORMATS("gemv_");
constexpr const char* kGemm[] = METALLIC_FORMATS("gemm_");
constexpr const char* kEmbed[] = METALLIC_FORMATS("embed_");
constexpr const char* kGemvNorm[] = METALLIC_FORMATS("gemv_norm_");
constexpr const char* kGemvNormSwiGlu[] = METALLIC_FORMATS("gemv_norm_swiglu_");
#undef METALLIC_FORMATS
// Kernels templated on a float / half element (rms_norm): [0]=f32, [1]=f16; -1: not covered.
int float_index(DType t) {
  switch (t) {
    case DType::kF32: return 0;
    case DType::kF16: return 1;
    case DType::kBF16:
    case DType::kQ8_0:
    case DType::kQ4_0:
    case DType::kQ4_1:
    case DType::kQ5_0:
    case DType::kQ5_1:
    case DType::kQ4_K:
    case DType::kQ5_K:
    case DType::kQ6_K: return -1;
  }
  return -1;
}
// KV-cache formats of rope_kv, attention_decode and flash_attn (shaders/kv_cache.h), as an index
// into the name tables below: f32, f16, q8_0, q4_0; -1: not covered.
int kv_index(DType t) {
  switch (t) {
    case DType::kF32: return 0;
    case DType::kF16: return 1;
    case DType::kQ8_0: return 2;
    case DType::kQ4_0: return 3;
    case DType::kBF16:
    case DType::kQ4_1:
    case DType::kQ5_0:
    case DType::kQ5_1:
    case DType::kQ4_K:
    case DType::kQ5_K:
    case DType::kQ6_K: return -1;
  }
  return -1;
}
#define METALLIC_KV_FORMATS(prefix) {prefix "f32", prefix "f16", prefix "q8_0", prefix "q4_0"}
constexpr const char* kRopeKv[] = METALLIC_KV_FORMATS("rope_kv_");
constexpr const char* kAttnDecode[] = METALLIC_KV_FORMATS("attention_decode_");
constexpr const char* kFlashAttn[] = METALLIC_KV_FORMATS("flash_attn_");
#undef METALLIC_KV_FORMATS

const float kZero = 0.f;  // bound where a kernel declares a buffer the op does not use

// Batches from this many tokens run the prefill kernels (gemm: each weight tile read once per 32
// tokens; flash_attn: each K/V tile once per 16 queries); a single token the decode kernels (gemv,
// the fused norm+gemv kernels, attention_decode). DEBT: the crossover is a guess until it can be
// measured on a GPU (llama.cpp's Metal backend switches to its matrix kernel at ~8 tokens).
constexpr int64_t kPrefillMinTokens = 2;

}  // namespace

uint64_t Launch::bytes_bound() const {
  uint64_t n = 0;
  for (int i = 0; i < n_bindings; ++i) n += bind[i].kind == Binding::Kind::kBuffer ? bind[i].extent : bind[i].nbytes;
  return n;
}

// Assembles one Launch; every method validates what it binds and names it in the error.
class MetalPlanDevice::Builder {
 public:
  Builder(const char* where, const char* kernel, uint32_t gx, uint32_t gy, uint32_t threads) : where_(where) {
    l.kernel = kernel;
    l.groups[0] = gx;
    l.groups[1] = gy;
    l.threads[0] = threads;
  }

  uint32_t u32(int64_t v, const char* what) const {
    if (v < 0 || v > std::numeric_limits<uint32_t>::max())
      fail(ErrorCode::kInvalidArgument, where_, std::string(what) + ": expected 0..2^32-1, got " + std::to_string(v));
    return static_cast<uint32_t>(v);
  }

  // Elements between rows of a float (or half) tensor, as the argument structs count them.
  uint32_t elem_stride(const Tensor& t, const char* what) const {
    const size_t e = dtype_info(t.dtype).block_bytes;
    if (dtype_info(t.dtype).block_elems != 1 || t.row_stride % e != 0)
      fail(ErrorCode::kInvalidArgument, where_,
           std::string(what) + ": expected a float or half tensor with whole-element rows, got " + dtype_name(t.dtype));
    return u32(static_cast<int64_t>(t.row_stride / e), what);
  }

  // Rows [0, rows) of a row-major tensor: binds from its first row to the end of row rows - 1.
  void tensor(int i, const Tensor& t, int64_t rows, const char* what) {
    if (!t.valid() || t.layout != Layout::kRows)
      fail(ErrorCode::kInvalidArgument, where_, std::string(what) + ": expected a bound row-major tensor");
    if (rows < 1 || rows > t.rows)
      fail(ErrorCode::kInvalidArgument, where_,
           std::string(what) + ": expected 1.." + std::to_string(t.rows) + " rows, got " + std::to_string(rows));
    const size_t extent = static_cast<size_t>(rows - 1) * t.row_stride + row_bytes(t.dtype, t.cols);
    if (t.offset > t.buf.nbytes || extent > t.buf.nbytes - t.offset)
      fail(ErrorCode::kInvalidArgument, where_,
           std::string(what) + ": " + std::to_string(rows) + " rows need " + std::to_string(extent) +
               " bytes from offset " + std::to_string(t.offset) + ", buffer has " + std::to_string(t.buf.nbytes));
    Binding& b = slot(i);
    b.kind = Binding::Kind::kBuffer;
    b.buf = t.buf;
    b.offset = t.offset;
    b.extent = extent;
  }

  // A buffer the kernel declares but the op does not use (reads guarded by a flag in the args).
  void zero(int i) { bytes(i, &kZero, sizeof(kZero)); }

  // The argument struct, by value (copied into the Launch).
  template <typename A>
  void args(int i, const A& a) {
    static_assert(sizeof(A) <= kMaxArgBytes, "argument struct larger than Launch::args");
    std::memcpy(l.args, &a, sizeof(A));
    bytes(i, l.args, sizeof(A));
  }

  Launch l;

 private:
  Binding& slot(int i) {
    if (i < 0 || i >= kMaxLaunchBindings)
      fail(ErrorCode::kKernelFailure, where_, std::string(l.kernel) + ": binding index " + std::to_string(i));
    l.n_bindings = std::max(l.n_bindings, i + 1);
    return l.bind[i];
  }
  void bytes(int i, const void* p, size_t n) {
    Binding& b = slot(i);
    b.kind = Binding::Kind::kBytes;
    b.bytes = p;
    b.nbytes = static_cast<uint32_t>(n);
  }

  const char* where_;
};

namespace {

uint32_t ceil_div(uint32_t a, uint32_t b) { return (a + b - 1) / b; }

// Threads per threadgroup for kernels that stride any amount of work: whole simdgroups, 32..256.
uint32_t stride_threads(int64_t work) {
  return static_cast<uint32_t>(std::clamp<int64_t>((work + 31) / 32, 1, 8) * 32);
}

// A K or V cache the rope_kv / attention kernels can bind for head_dim hd: a covered format of
// whole rows (hd a multiple of the block, rows packed), at an offset aligned for the widest load
// the kernels make from it (a float, a half, or a block's 2-byte fp16 scale: shaders/kv_cache.h).
bool kv_cache_ok(const Tensor& t, int64_t hd) {
  if (kv_index(t.dtype) < 0) return false;
  const DTypeInfo i = dtype_info(t.dtype);
  const size_t align = i.block_elems == 1 ? i.block_bytes : 2;
  return hd % i.block_elems == 0 && t.cols == hd && t.row_stride == row_bytes(t.dtype, hd) && t.offset % align == 0;
}

}  // namespace

int64_t MetalPlanDevice::draw_scratch_words(int64_t n) const {
  return (n + kSampleChunk - 1) / kSampleChunk * kSampleScratchWordsPerChunk;
}

MetalPlanDevice::MetalPlanDevice(const char* where, const DeviceLimits& limits)
    : where_(where), argmax_ok_(limits.n_vocab >= 1 && limits.n_vocab <= kSampleMaxVocab) {
  if (limits.head_dim < 1 || limits.head_dim > static_cast<int32_t>(kAttnMaxHeadDim))
    fail(ErrorCode::kNotImplemented, where,
         "head_dim: attention_decode covers 1.." + std::to_string(kAttnMaxHeadDim) + ", got " +
             std::to_string(limits.head_dim));
}

bool MetalPlanDevice::supports(OpCode op, DType dtype) const {
  switch (op) {
    case OpCode::kEmbed:
    case OpCode::kMatMul:
    case OpCode::kNormMatMul:
    case OpCode::kNormSwiGlu: return fmt_index(dtype) >= 0;
    case OpCode::kRmsNorm: return float_index(dtype) >= 0;
    case OpCode::kRopeKv:
    case OpCode::kAttention: return kv_index(dtype) >= 0;
    case OpCode::kSwiGlu: return dtype == DType::kF32;
    case OpCode::kArgmax:
    case OpCode::kSample: return dtype == DType::kF32 && argmax_ok_;
  }
  return false;
}

void MetalPlanDevice::run(const OpCall& call) {
  switch (call.op) {
    case OpCode::kEmbed: embed(call); return;
    case OpCode::kRmsNorm: rms_norm(call); return;
    case OpCode::kMatMul: matmul(call); return;
    case OpCode::kRopeKv:
    case OpCode::kAttention:
      if (call.p.n_seqs > 0) {  // a ragged batch: one launch per run (DEBT: one ragged launch)
        decompose(call, [](void* self, const OpCall& op) { static_cast<MetalPlanDevice*>(self)->run(op); }, this);
      } else if (call.op == OpCode::kRopeKv) {
        rope_kv(call);
      } else {
        attention(call);
      }
      return;
    case OpCode::kSwiGlu: swiglu(call); return;
    case OpCode::kArgmax:
    case OpCode::kSample: draw(call); return;
    case OpCode::kNormMatMul:
      if (!norm_matmul(call))
        decompose(call, [](void* self, const OpCall& op) { static_cast<MetalPlanDevice*>(self)->run(op); }, this);
      return;
    case OpCode::kNormSwiGlu:
      if (!norm_swiglu(call))
        decompose(call, [](void* self, const OpCall& op) { static_cast<MetalPlanDevice*>(self)->run(op); }, this);
      return;
  }
  fail(ErrorCode::kKernelFailure, where_, "run: unknown op");
}

void MetalPlanDevice::submit(Launch& l) {
  encode(l);
  ++counters_.dispatches;
  counters_.bytes_bound += l.bytes_bound();
}

void MetalPlanDevice::embed(const OpCall& c) {
  const Tensor& table = c.t[0];
  const Tensor& tokens = c.t[1];
  const Tensor& out = c.t[2];
  const int64_t n = c.p.n_tokens;
  const int f = fmt_index(table.dtype);
  if (f < 0) fail(ErrorCode::kUnsupportedDType, where_, std::string("embed: no kernel for ") + dtype_name(table.dtype));
  if (out.cols != table.cols) fail(ErrorCode::kShapeMismatch, where_, "embed: output width differs from the table");
  Builder d(where_, kEmbed[f], 0, 0, kElementwiseThreads);
  d.l.groups[0] = ceil_div(d.u32(table.cols, "cols"), kElementwiseThreads);
  d.l.groups[1] = d.u32(n, "n_tokens");
  d.tensor(0, table, table.rows, "embed table");
  d.tensor(1, tokens, n, "embed tokens");
  for (int64_t t = 0; t < n; ++t) {  // the kernel indexes the table with these (written by copy_in)
    const int32_t id = tokens.ptr<const int32_t>()[t];
    if (id < 0 || id >= table.rows)
      fail(ErrorCode::kInvalidArgument, where_,
           "embed: token " + std::to_string(t) + ": expected an id in [0, " + std::to_string(table.rows) + "), got " +
               std::to_string(id));
  }
  d.tensor(2, out, n, "embed out");
  d.args(3, EmbedArgs{d.u32(table.cols, "cols"), d.u32(static_cast<int64_t>(table.row_stride), "row_bytes"),
                      d.elem_stride(out, "embed out"), c.p.scale});
  submit(d.l);
}

void MetalPlanDevice::rms_norm(const OpCall& c) {
  const Tensor& x = c.t[0];
  const Tensor& out = c.t[2];
  const int64_t n = c.p.n_tokens;
  const int f = float_index(x.dtype);
  if (f < 0 || out.dtype != x.dtype || c.t[1].dtype != DType::kF32 || c.t[1].cols != x.cols || out.cols != x.cols)
    fail(ErrorCode::kInvalidArgument, where_,
         "rms_norm: expected x, out of one float type and an F32 weight of x's width");
  static constexpr const char* kNames[] = {"rms_norm_f32", "rms_norm_f16"};
  Builder d(where_, kNames[f], 0, 1, stride_threads(x.cols));
  d.l.groups[0] = d.u32(n, "n_tokens");
  d.tensor(0, x, n, "rms_norm x");
  d.tensor(1, c.t[1], 1, "rms_norm weight");
  d.tensor(2, out, n, "rms_norm out");
  d.args(3, RmsNormArgs{d.u32(x.cols, "cols"), d.elem_stride(x, "rms_norm x"), d.elem_stride(out, "rms_norm out"),
                        c.p.eps, c.p.accumulate ? 1u : 0u, 0u, 0u, 0u});
  submit(d.l);
}

void MetalPlanDevice::matmul(const OpCall& c) {
  const Tensor& x = c.t[0];
  const int64_t n = c.p.n_tokens;
  if (c.p.n_weights < 1 || c.p.n_weights > 3)
    fail(ErrorCode::kInvalidArgument, where_, "matmul: n_weights: expected 1..3, got " + std::to_string(c.p.n_weights));
  if (x.dtype != DType::kF32) fail(ErrorCode::kInvalidArgument, where_, "matmul: expected F32 activations");
  const bool prefill = n >= kPrefillMinTokens;
  for (int i = 0; i < c.p.n_weights; ++i) {
    const Tensor& w = c.t[1 + i];
    const Tensor& bias = c.t[4 + i];
    const Tensor& out = c.t[7 + i];
    const int f = fmt_index(w.dtype);
    if (f < 0)
      fail(ErrorCode::kUnsupportedDType, where_, std::string("matmul: no gemv kernel for ") + dtype_name(w.dtype));
    if (w.cols != x.cols || out.cols < w.rows || out.dtype != DType::kF32)
      fail(ErrorCode::kShapeMismatch, where_,
           "matmul: weight " + std::to_string(i) + " is " + std::to_string(w.rows) + "x" + std::to_string(w.cols) +
               ", x has " + std::to_string(x.cols) + " columns, out " + std::to_string(out.cols));
    Builder d(where_, prefill ? kGemm[f] : kGemv[f], 0, 0, (prefill ? kGemmSimdgroups : kGemvSimdgroups) * 32);
    if (prefill) {
      d.l.groups[0] = ceil_div(d.u32(w.rows, "rows"), kGemmTileRows);
      d.l.groups[1] = ceil_div(d.u32(n, "n_tokens"), kGemmTileTokens);
    } else {
      d.l.groups[0] = ceil_div(d.u32(w.rows, "rows"), kGemvRowsPerGroup);
      d.l.groups[1] = d.u32(n, "n_tokens");
    }
    d.tensor(0, w, w.rows, "matmul weight");
    d.tensor(1, x, n, "matmul x");
    if (bias.valid()) {
      if (bias.dtype != DType::kF32 || bias.cols != w.rows)
        fail(ErrorCode::kShapeMismatch, where_,
             "matmul: bias " + std::to_string(i) + ": expected F32 of " + std::to_string(w.rows) + " values");
      d.tensor(2, bias, 1, "matmul bias");
    } else {
      d.zero(2);  // read only when has_bias
    }
    d.tensor(3, out, n, "matmul out");
    const uint32_t rows = d.u32(w.rows, "rows"), cols = d.u32(w.cols, "cols");
    const uint32_t row_b = d.u32(static_cast<int64_t>(w.row_stride), "row_bytes");
    const uint32_t xs = d.elem_stride(x, "matmul x"), os = d.elem_stride(out, "matmul out");
    const uint32_t acc = c.p.accumulate ? 1u : 0u, has_bias = bias.valid() ? 1u : 0u;
    if (prefill) {
      d.args(4, GemmArgs{rows, cols, row_b, xs, os, d.u32(n, "n_tokens"), acc, has_bias});
    } else {
      d.args(4, GemvArgs{rows, cols, row_b, xs, os, acc, has_bias, 0u});
    }
    submit(d.l);
  }
}

// RMSNorm + up to 3 GEMVs in one dispatch when the weights share a format and x fits the kernel's
// threadgroup row; otherwise the caller decomposes (rms_norm, then one gemv per format).
bool MetalPlanDevice::norm_matmul(const OpCall& c) {
  const Tensor& x = c.t[0];
  const int nw = c.p.n_weights;
  if (c.p.n_tokens >= kPrefillMinTokens) return false;  // rms_norm once, then gemm
  if (nw < 1 || nw > 3 || x.dtype != DType::kF32 || x.cols > static_cast<int64_t>(kFusedNormMaxCols)) return false;
  const DType dt = c.t[1].dtype;
  for (int i = 0; i < nw; ++i)
    if (c.t[1 + i].dtype != dt || c.t[1 + i].layout != Layout::kRows) return false;
  const int f = fmt_index(dt);
  if (f < 0) fail(ErrorCode::kUnsupportedDType, where_, std::string("norm_matmul: no kernel for ") + dtype_name(dt));
  const Tensor& nwt = c.t[11];
  if (nwt.dtype != DType::kF32 || nwt.cols != x.cols)
    fail(ErrorCode::kShapeMismatch, where_, "norm_matmul: expected an F32 norm weight of x's width");
  const int64_t n = c.p.n_tokens;
  Builder d(where_, kGemvNorm[f], 0, 0, kFusedSimdgroups * 32);
  uint32_t rows[3] = {0, 0, 0}, row_b[3] = {0, 0, 0}, out_s[3] = {0, 0, 0}, has_bias = 0;
  for (int i = 0; i < 3; ++i) {
    if (i >= nw) {  // absent: 0 rows, never read or written
      d.zero(i);
      d.zero(5 + i);
      d.zero(8 + i);
      continue;
    }
    const Tensor& w = c.t[1 + i];
    const Tensor& bias = c.t[4 + i];
    const Tensor& out = c.t[7 + i];
    if (w.cols != x.cols || out.cols < w.rows || out.dtype != DType::kF32)
      fail(ErrorCode::kShapeMismatch, where_,
           "norm_matmul: weight " + std::to_string(i) + " is " + std::to_string(w.rows) + "x" + std::to_string(w.cols) +
               ", x has " + std::to_string(x.cols) + " columns, out " + std::to_string(out.cols));
    rows[i] = d.u32(w.rows, "rows");
    row_b[i] = d.u32(static_cast<int64_t>(w.row_stride), "row_bytes");
    out_s[i] = d.elem_stride(out, "norm_matmul out");
    d.tensor(i, w, w.rows, "norm_matmul weight");
    if (bias.valid()) {
      if (bias.dtype != DType::kF32 || bias.cols != w.rows)
        fail(ErrorCode::kShapeMismatch, where_,
             "norm_matmul: bias " + std::to_string(i) + ": expected F32 of " + std::to_string(w.rows) + " values");
      d.tensor(5 + i, bias, 1, "norm_matmul bias");
      has_bias |= 1u << i;
    } else {
      d.zero(5 + i);
    }
    d.tensor(8 + i, out, n, "norm_matmul out");
  }
  d.tensor(3, x, n, "norm_matmul x");
  d.tensor(4, nwt, 1, "norm_matmul norm weight");
  d.l.groups[0] = ceil_div(d.u32(static_cast<int64_t>(rows[0]) + rows[1] + rows[2], "rows"), kFusedRowsPerGroup);
  d.l.groups[1] = d.u32(n, "n_tokens");
  d.args(11,
         GemvNormArgs{rows[0], rows[1], rows[2], d.u32(x.cols, "cols"), row_b[0], row_b[1], row_b[2],
                      d.elem_stride(x, "norm_matmul x"), out_s[0], out_s[1], out_s[2], has_bias, c.p.eps, 0u, 0u, 0u});
  submit(d.l);
  return true;
}

bool MetalPlanDevice::norm_swiglu(const OpCall& c) {
  const Tensor& x = c.t[0];
  const Tensor& wg = c.t[1];
  const Tensor& wu = c.t[2];
  const Tensor& out = c.t[7];
  if (c.p.n_tokens >= kPrefillMinTokens) return false;  // rms_norm once, then gemm, swiglu
  if (x.dtype != DType::kF32 || x.cols > static_cast<int64_t>(kFusedNormMaxCols) || wg.dtype != wu.dtype ||
      wg.layout != Layout::kRows || wu.layout != Layout::kRows)
    return false;
  const int f = fmt_index(wg.dtype);
  if (f < 0)
    fail(ErrorCode::kUnsupportedDType, where_, std::string("norm_swiglu: no kernel for ") + dtype_name(wg.dtype));
  const Tensor& nwt = c.t[11];
  if (wg.cols != x.cols || wu.cols != x.cols || wu.rows != wg.rows || out.cols < wg.rows || out.dtype != DType::kF32 ||
      nwt.dtype != DType::kF32 || nwt.cols != x.cols)
    fail(ErrorCode::kShapeMismatch, where_,
         "norm_swiglu: expected gate and up of one shape (rows, x's width), an F32 out of >= rows columns and an "
         "F32 norm weight of x's width");
  const int64_t n = c.p.n_tokens;
  Builder d(where_, kGemvNormSwiGlu[f], 0, 0, kFusedSimdgroups * 32);
  d.l.groups[0] = ceil_div(d.u32(wg.rows, "rows"), kFusedRowsPerGroup);
  d.l.groups[1] = d.u32(n, "n_tokens");
  d.tensor(0, wg, wg.rows, "norm_swiglu gate");
  d.tensor(1, wu, wu.rows, "norm_swiglu up");
  d.tensor(2, x, n, "norm_swiglu x");
  d.tensor(3, nwt, 1, "norm_swiglu norm weight");
  d.tensor(4, out, n, "norm_swiglu out");
  d.args(5,
         GemvSwiGluArgs{d.u32(wg.rows, "rows"), d.u32(x.cols, "cols"),
                        d.u32(static_cast<int64_t>(wg.row_stride), "row_bytes_gate"),
                        d.u32(static_cast<int64_t>(wu.row_stride), "row_bytes_up"), d.elem_stride(x, "norm_swiglu x"),
                        d.elem_stride(out, "norm_swiglu out"), c.p.eps, c.p.gelu ? 1u : 0u});
  submit(d.l);
  return true;
}

void MetalPlanDevice::rope_kv(const OpCall& c) {
  const Tensor& kc = c.t[3];
  const Tensor& vc = c.t[4];
  const OpParams& p = c.p;
  const int f = kv_index(kc.dtype);
  if (f < 0 || vc.dtype != kc.dtype)
    fail(ErrorCode::kUnsupportedDType, where_,
         "rope_kv: expected an F32, F16, Q8_0 or Q4_0 KV cache, got " + std::string(dtype_name(kc.dtype)) + " / " +
             dtype_name(vc.dtype));
  if (!(p.head_dim > 0 && p.head_dim % 2 == 0 && kv_cache_ok(kc, p.head_dim) && kv_cache_ok(vc, p.head_dim) &&
        kc.rows >= p.n_head_kv * p.kv_capacity && vc.rows >= kc.rows && kv_positions_ok(p) && p.rope_dim >= 0 &&
        p.rope_dim <= p.head_dim && p.rope_dim % 2 == 0 &&
        c.t[5].cols == (p.rope_dim > 0 ? p.rope_dim : p.head_dim) / 2 && p.rope_mscale > 0.f))
    fail(ErrorCode::kInvalidArgument, where_, "rope_kv: cache, positions or inv_freq do not match the op's shape");
  // Whole simdgroups (rope_kv_q quantizes a block per simdgroup).
  Builder d(where_, kRopeKv[f], 0, 1, stride_threads(static_cast<int64_t>(p.n_head + p.n_head_kv) * p.head_dim / 2));
  d.l.groups[0] = d.u32(p.n_tokens, "n_tokens");
  d.tensor(0, c.t[0], p.n_tokens, "rope q");
  d.tensor(1, c.t[1], p.n_tokens, "rope k");
  d.tensor(2, c.t[2], p.n_tokens, "rope v");
  d.tensor(3, kc, kc.rows, "K cache");
  d.tensor(4, vc, vc.rows, "V cache");
  d.tensor(5, c.t[5], 1, "inv_freq");
  d.args(6, RopeKvArgs{d.u32(p.n_head, "n_head"), d.u32(p.n_head_kv, "n_head_kv"), d.u32(p.head_dim, "head_dim"),
                       p.neox ? 1u : 0u, d.u32(p.pos0, "pos0"), d.u32(p.kv_capacity, "kv_capacity"),
                       d.elem_stride(c.t[0], "rope q"), d.elem_stride(c.t[1], "rope k"),
                       d.elem_stride(c.t[2], "rope v"), d.u32(p.rope_dim, "rope_dim"), p.rope_mscale, 0u});
  submit(d.l);
}

void MetalPlanDevice::attention(const OpCall& c) {
  const Tensor& kc = c.t[1];
  const Tensor& vc = c.t[2];
  const OpParams& p = c.p;
  const int f = kv_index(kc.dtype);
  if (f < 0 || vc.dtype != kc.dtype)
    fail(ErrorCode::kUnsupportedDType, where_,
         "attention: expected an F32, F16, Q8_0 or Q4_0 KV cache, got " + std::string(dtype_name(kc.dtype)) + " / " +
             dtype_name(vc.dtype));
  if (!(p.head_dim >= 1 && p.head_dim <= static_cast<int32_t>(kAttnMaxHeadDim) && p.n_head_kv > 0 &&
        p.n_head % p.n_head_kv == 0 && kv_cache_ok(kc, p.head_dim) && kv_cache_ok(vc, p.head_dim) &&
        kc.rows >= p.n_head_kv * p.kv_capacity && vc.rows >= kc.rows && kv_positions_ok(p)))
    fail(ErrorCode::kInvalidArgument, where_, "attention: heads, cache or positions do not match the op's shape");
  if (p.n_tokens >= kPrefillMinTokens) {  // tiled: each K/V tile read once per kFlashTileQ queries
    Builder d(where_, kFlashAttn[f], 0, 0, kFlashThreads);
    d.l.groups[0] = d.u32(p.n_head, "n_head");
    d.l.groups[1] = ceil_div(d.u32(p.n_tokens, "n_tokens"), kFlashTileQ);
    d.tensor(0, c.t[0], p.n_tokens, "attention q");
    d.tensor(1, kc, kc.rows, "K cache");
    d.tensor(2, vc, vc.rows, "V cache");
    d.tensor(3, c.t[3], p.n_tokens, "attention out");
    d.args(4, FlashAttnArgs{d.u32(p.n_head, "n_head"), d.u32(p.n_head_kv, "n_head_kv"), d.u32(p.head_dim, "head_dim"),
                            d.u32(p.pos0, "pos0"), d.u32(p.kv_capacity, "kv_capacity"),
                            d.elem_stride(c.t[0], "attention q"), d.elem_stride(c.t[3], "attention out"),
                            d.u32(p.n_tokens, "n_tokens"), p.scale, d.u32(p.window, "window"), p.softcap, 0u});
    submit(d.l);
    return;
  }
  Builder d(where_, kAttnDecode[f], 0, 0, kAttnSimdgroups * 32);
  d.l.groups[0] = d.u32(p.n_head, "n_head");
  d.l.groups[1] = d.u32(p.n_tokens, "n_tokens");
  d.tensor(0, c.t[0], p.n_tokens, "attention q");
  d.tensor(1, kc, kc.rows, "K cache");
  d.tensor(2, vc, vc.rows, "V cache");
  d.tensor(3, c.t[3], p.n_tokens, "attention out");
  d.args(4, AttnArgs{d.u32(p.n_head, "n_head"), d.u32(p.n_head_kv, "n_head_kv"), d.u32(p.head_dim, "head_dim"),
                     d.u32(p.pos0, "pos0"), d.u32(p.kv_capacity, "kv_capacity"), d.elem_stride(c.t[0], "attention q"),
                     d.elem_stride(c.t[3], "attention out"), p.scale, d.u32(p.window, "window"), p.softcap});
  submit(d.l);
}

void MetalPlanDevice::swiglu(const OpCall& c) {
  const Tensor& g = c.t[0];
  const Tensor& u = c.t[1];
  if (g.dtype != DType::kF32 || u.dtype != DType::kF32 || u.cols != g.cols)
    fail(ErrorCode::kInvalidArgument, where_, "swiglu: expected F32 gate and up of one width");
  Builder d(where_, "swiglu_f32", 0, 0, kElementwiseThreads);
  d.l.groups[0] = ceil_div(d.u32(g.cols, "cols"), kElementwiseThreads);
  d.l.groups[1] = d.u32(c.p.n_tokens, "n_tokens");
  d.tensor(0, g, c.p.n_tokens, "swiglu gate");
  d.tensor(1, u, c.p.n_tokens, "swiglu up");
  d.args(2, SwiGluArgs{d.u32(g.cols, "cols"), d.elem_stride(g, "swiglu gate"), d.elem_stride(u, "swiglu up"),
                       c.p.gelu ? 1u : 0u});
  submit(d.l);
}

// A token drawn on the device from one row of logits (shaders/sample.h), as consecutive passes
// sharing the bindings logits(0), scratch(1), result(2), SampleArgs(3): greedy (kArgmax)
// argmax_partial (one threadgroup per kSampleChunk logits) + argmax_final; a temperature draw
// (kSample) sample_partial, sample_sums when the mode needs every token's mass, sample_final. The
// result is the token, or kSampleNoToken / kSampleFallback (read back as -1 / -2: the host draws
// with the same uniform).
void MetalPlanDevice::draw(const OpCall& c) {
  const bool greedy = c.op == OpCode::kArgmax;
  const Tensor& logits = c.t[0];
  const int64_t n = logits.cols;
  const OpParams& p = c.p;
  if (logits.dtype != DType::kF32 || n < 1 || n > static_cast<int64_t>(kSampleMaxVocab) ||
      (!greedy && !(p.scale > 0.f && p.top_k >= 0 && p.top_p > 0.f && p.top_p <= 1.f && p.min_p >= 0.f &&
                    p.min_p <= 1.f && p.uniform >= 0.f && p.uniform <= 1.f)))
    fail(ErrorCode::kInvalidArgument, where_,
         "draw: expected 1.." + std::to_string(kSampleMaxVocab) +
             " F32 logits (and to sample: 1/temperature > 0, top_k >= 0, top_p in (0, 1], min_p and u in [0, 1])");
  const Tensor& scratch = c.t[1];
  if (scratch.cols * static_cast<int64_t>(dtype_info(scratch.dtype).block_bytes) < draw_scratch_words(n) * 4)
    fail(ErrorCode::kInvalidArgument, where_, "draw: scratch smaller than draw_scratch_words(n)");
  // top_k beyond the kernels' cap: the final kernel reports kSampleFallback (the host draws).
  const uint32_t top_k = greedy ? 0u : static_cast<uint32_t>(p.top_k);
  const SampleArgs a = greedy
                           ? SampleArgs{static_cast<uint32_t>(n), 0u, 1.f, 1.f, 0.f, 0.f, 0u, 0u}
                           : SampleArgs{static_cast<uint32_t>(n), top_k, p.scale, p.top_p, p.min_p, p.uniform, 0u, 0u};
  const char* passes[3] = {"argmax_partial_f32", nullptr, "argmax_final_f32"};
  if (!greedy) {
    passes[0] = "sample_partial_f32";
    passes[1] = sample_needs_sums(a.n, top_k) ? "sample_sums_f32" : nullptr;
    passes[2] = "sample_final_f32";
  }
  const uint32_t groups = ceil_div(static_cast<uint32_t>(n), kSampleChunk);
  for (int i = 0; i < 3; ++i) {
    if (passes[i] == nullptr) continue;
    Builder d(where_, passes[i], i == 2 ? 1u : groups, 1, kSampleThreads);  // the last pass: one threadgroup
    d.tensor(0, logits, 1, "draw logits");
    d.tensor(1, scratch, 1, "draw scratch");
    d.tensor(2, c.t[2], 1, "draw out");
    d.args(3, a);
    submit(d.l);
  }
}

}  // namespace metallic
