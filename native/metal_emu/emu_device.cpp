// The emulated-Metal device (emu_device.h). Host code only: plans each op as kernel dispatches
// with the argument structs of shaders/args.h and hands them to the emulator library's C ABI.
//
// Safety fence: every buffer handed to a kernel is bound as [host + offset, + extent) where the
// extent is what the kernel may touch for the op's rows (checked against the buffer's size), so
// a plan bug surfaces as a typed error here, not as a kernel reading outside its buffer.
#include "metal_emu/emu_device.h"

#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <string>

#include "core/error.h"
#include "shaders/args.h"

namespace metallic {

namespace {

constexpr const char* kWhere = "metal-emulated";
constexpr const char* kLibName = "libmetallic_shaders_emu.so";
constexpr const char* kLibEnv = "METALLIC_EMU_LIB";
constexpr size_t kAlign = 64;

// Weight formats the gemv / embed kernels are instantiated for (shaders/gemv.metal, embed.metal),
// as an index into the kernel-name tables below; -1: not covered. The one dtype switch here.
int fmt_index(DType t) {
  switch (t) {
    case DType::kF32: return 0;
    case DType::kF16: return 1;
    case DType::kBF16: return 2;
    case DType::kQ8_0: return 3;
    case DType::kQ4_0: return 4;
    case DType::kQ4_1: return 5;
    case DType::kQ5_0:
    case DType::kQ5_1:
    case DType::kQ4_K:
    case DType::kQ5_K:
    case DType::kQ6_K: return -1;
  }
  return -1;
}
constexpr const char* kGemv[] = {"gemv_f32", "gemv_f16", "gemv_bf16", "gemv_q8_0", "gemv_q4_0", "gemv_q4_1"};
constexpr const char* kEmbed[] = {"embed_f32", "embed_f16", "embed_bf16", "embed_q8_0", "embed_q4_0", "embed_q4_1"};

// Kernels templated on a float / half element (rms_norm, rope_kv, attention_decode): [0]=f32, [1]=f16.
int float_index(DType t) { return t == DType::kF32 ? 0 : (t == DType::kF16 ? 1 : -1); }

uint32_t u32(int64_t v, const char* what) {
  check(v >= 0 && v <= std::numeric_limits<uint32_t>::max(), ErrorCode::kInvalidArgument, kWhere,
        std::string(what) + ": expected 0..2^32-1, got " + std::to_string(v));
  return static_cast<uint32_t>(v);
}

uint32_t ceil_div(int64_t a, int64_t b) { return u32((a + b - 1) / b, "grid size"); }

// Threads per threadgroup for kernels that stride any amount of work: whole simdgroups, 32..256.
uint32_t stride_threads(int64_t work) {
  return static_cast<uint32_t>(std::clamp<int64_t>((work + 31) / 32, 1, 8) * 32);
}

// Elements between rows of a float (or half) tensor, as the argument structs count them.
uint32_t elem_stride(const Tensor& t, const char* what) {
  const size_t e = dtype_info(t.dtype).block_bytes;
  check(dtype_info(t.dtype).block_elems == 1 && t.row_stride % e == 0, ErrorCode::kInvalidArgument, kWhere,
        std::string(what) + ": expected a float or half tensor with whole-element rows, got " + dtype_name(t.dtype));
  return u32(static_cast<int64_t>(t.row_stride / e), what);
}

// Directory of the module this code is linked into (_core), found from one of its functions.
std::string core_dir() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&core_dir), &info) == 0 || info.dli_fname == nullptr) return {};
  const std::string path = info.dli_fname;
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? std::string(".") : path.substr(0, slash);
}

// Loads the emulator library once per process: next to _core first, then $METALLIC_EMU_LIB.
// Never unloaded (its kernels register themselves in static tables at load).
const EmuApi& load_api() {
  static std::mutex mu;
  static EmuApi api;
  std::lock_guard<std::mutex> lock(mu);
  if (api.dispatch != nullptr) return api;
  std::string tried;
  auto note = [&tried](const std::string& s) { tried += (tried.empty() ? "" : "; ") + s; };
  void* handle = nullptr;
  const std::string dir = core_dir();
  const char* env = std::getenv(kLibEnv);
  std::string candidates[2];
  int n = 0;
  if (!dir.empty()) candidates[n++] = dir + "/" + kLibName;
  if (env != nullptr && *env != '\0') {
    candidates[n++] = env;
  } else {
    note(std::string("$") + kLibEnv + " (unset)");
  }
  for (int i = 0; i < n && handle == nullptr; ++i) {
    if (access(candidates[i].c_str(), R_OK) != 0) {
      note(candidates[i] + " (not found)");
      continue;
    }
    handle = dlopen(candidates[i].c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      const char* e = dlerror();
      note(candidates[i] + " (" + (e != nullptr ? e : "dlopen failed") + ")");
    }
  }
  check(handle != nullptr, ErrorCode::kDeviceUnavailable, kWhere,
        std::string("cannot load the Metal emulator library ") + kLibName + ": tried " + tried +
            ". It is built next to _core only when clang++-19 is installed (scripts/install_clang.sh), then rebuild "
            "(scripts/dev_build.sh)");
  auto sym = [&](const char* s) {
    void* p = dlsym(handle, s);
    if (p == nullptr) {
      dlclose(handle);
      fail(ErrorCode::kDeviceUnavailable, kWhere,
           std::string(kLibName) + ": missing symbol " + s + "; rebuild it with clang++-19 (scripts/dev_build.sh)");
    }
    return p;
  };
  auto version = reinterpret_cast<int (*)()>(sym("emu_abi_version"));
  auto dispatch = reinterpret_cast<int (*)(const emu_dispatch_t*, char*, uint64_t)>(sym("emu_dispatch"));
  const int v = version();
  if (v != EMU_ABI_VERSION) {
    dlclose(handle);
    fail(ErrorCode::kDeviceUnavailable, kWhere,
         std::string(kLibName) + ": ABI version expected " + std::to_string(EMU_ABI_VERSION) + ", got " +
             std::to_string(v) + "; rebuild it (scripts/dev_build.sh)");
  }
  api.abi_version = version;
  api.dispatch = dispatch;
  return api;
}

const float kZero = 0.f;  // bound where a kernel declares a buffer the op does not use (no bias)

}  // namespace

// One kernel launch being assembled: grid, threadgroup size and bound buffers.
struct MetalEmuDevice::Dispatch {
  emu_dispatch_t d{};
  uint64_t bytes = 0;

  Dispatch(const char* kernel, uint32_t gx, uint32_t gy, uint32_t threads) {
    d.kernel = kernel;
    d.groups[0] = gx;
    d.groups[1] = gy;
    d.groups[2] = 1;
    d.threads[0] = threads;
    d.threads[1] = 1;
    d.threads[2] = 1;
  }

  void raw(int i, const void* p, uint64_t n) {
    d.buffers[i] = emu_buffer{const_cast<void*>(p), n};
    bytes += n;
  }

  template <typename A>
  void args(int i, const A& a) {
    raw(i, &a, sizeof(A));
  }

  // Rows [0, rows) of a row-major tensor: binds from its first row to the end of row rows - 1.
  void tensor(int i, const Tensor& t, int64_t rows, const char* what) {
    check(t.valid() && t.layout == Layout::kRows, ErrorCode::kInvalidArgument, kWhere,
          std::string(what) + ": expected a bound row-major tensor");
    check(rows >= 1 && rows <= t.rows, ErrorCode::kInvalidArgument, kWhere,
          std::string(what) + ": expected 1.." + std::to_string(t.rows) + " rows, got " + std::to_string(rows));
    const size_t extent = static_cast<size_t>(rows - 1) * t.row_stride + row_bytes(t.dtype, t.cols);
    check(t.offset <= t.buf.nbytes && extent <= t.buf.nbytes - t.offset, ErrorCode::kInvalidArgument, kWhere,
          std::string(what) + ": " + std::to_string(rows) + " rows need " + std::to_string(extent) +
              " bytes from offset " + std::to_string(t.offset) + ", buffer has " + std::to_string(t.buf.nbytes));
    raw(i, static_cast<const char*>(t.buf.host) + t.offset, extent);
  }
};

MetalEmuDevice::MetalEmuDevice(int threads, const DeviceLimits& limits) : api_(&load_api()), workers_(threads) {
  check(limits.head_dim >= 1 && limits.head_dim <= static_cast<int32_t>(kAttnMaxHeadDim), ErrorCode::kNotImplemented,
        kWhere,
        "head_dim: attention_decode covers 1.." + std::to_string(kAttnMaxHeadDim) + ", got " +
            std::to_string(limits.head_dim));
}

MetalEmuDevice::~MetalEmuDevice() = default;

Buffer MetalEmuDevice::alloc(size_t nbytes) {
  // Host memory: the emulator runs the kernels on host pointers (unified memory, as on Apple).
  const size_t rounded = (nbytes + kAlign - 1) / kAlign * kAlign;
  void* p = std::calloc(1, rounded + kAlign);
  if (p == nullptr) fail(ErrorCode::kOutOfMemory, kWhere, "cannot allocate " + std::to_string(nbytes) + " bytes");
  const auto raw = reinterpret_cast<uintptr_t>(p);
  const uintptr_t aligned = (raw + kAlign - 1) / kAlign * kAlign;
  return Buffer{reinterpret_cast<void*>(aligned), nbytes, p};  // handle: the pointer to free
}

Buffer MetalEmuDevice::wrap_host(const void* ptr, size_t nbytes) {
  return Buffer{const_cast<void*>(ptr), nbytes, nullptr};
}

void MetalEmuDevice::release(Buffer& buf) {
  std::free(buf.handle);  // wrapped host ranges have no handle
  buf = Buffer{};
}

Tensor MetalEmuDevice::prepare_weight(const Tensor& view, bool) { return view; }  // kernels read GGUF rows

void MetalEmuDevice::copy_in(const Buffer& dst, size_t offset, const void* src, size_t nbytes) {
  check(offset <= dst.nbytes && nbytes <= dst.nbytes - offset, ErrorCode::kInvalidArgument, "metal-emulated.copy_in",
        "range outside buffer");
  std::memcpy(static_cast<char*>(dst.host) + offset, src, nbytes);
}

void MetalEmuDevice::copy_out(const Buffer& src, size_t offset, void* dst, size_t nbytes) {
  check(offset <= src.nbytes && nbytes <= src.nbytes - offset, ErrorCode::kInvalidArgument, "metal-emulated.copy_out",
        "range outside buffer");
  std::memcpy(dst, static_cast<const char*>(src.host) + offset, nbytes);
}

bool MetalEmuDevice::supports(OpCode op, DType dtype) const {
  switch (op) {
    case OpCode::kEmbed:
    case OpCode::kMatMul: return fmt_index(dtype) >= 0;
    case OpCode::kRmsNorm:
    case OpCode::kRopeKv:
    case OpCode::kAttention: return float_index(dtype) >= 0;
    case OpCode::kSwiGlu: return dtype == DType::kF32;
  }
  return false;
}

void MetalEmuDevice::run(const OpCall& call) {
  switch (call.op) {
    case OpCode::kEmbed: embed(call); return;
    case OpCode::kRmsNorm: rms_norm(call); return;
    case OpCode::kMatMul: matmul(call); return;
    case OpCode::kRopeKv: rope_kv(call); return;
    case OpCode::kAttention: attention(call); return;
    case OpCode::kSwiGlu: swiglu(call); return;
  }
  fail(ErrorCode::kKernelFailure, "metal-emulated.run", "unknown op");
}

// Dispatches run to completion inside emu_dispatch, so there is nothing in flight to wait for
// (the Metal device will commit and wait on its command buffer here).
void MetalEmuDevice::synchronize() {}

void MetalEmuDevice::submit(Dispatch& d) {
  d.d.workers = workers_;
  char err[1024] = {0};
  const int rc = api_->dispatch(&d.d, err, sizeof(err));
  ++counters_.dispatches;
  counters_.bytes_bound += d.bytes;
  if (rc != EMU_OK)
    fail(ErrorCode::kKernelFailure, "metal-emulated.run",
         std::string(err[0] != '\0' ? err : "emulator dispatch failed") + " (code " + std::to_string(rc) + ")");
}

void MetalEmuDevice::embed(const OpCall& c) {
  const Tensor& table = c.t[0];
  const Tensor& tokens = c.t[1];
  const Tensor& out = c.t[2];
  const int64_t n = c.p.n_tokens;
  const int f = fmt_index(table.dtype);
  check(f >= 0, ErrorCode::kUnsupportedDType, kWhere, std::string("embed: no kernel for ") + dtype_name(table.dtype));
  check(out.cols == table.cols, ErrorCode::kShapeMismatch, kWhere, "embed: output width differs from the table");
  Dispatch d(kEmbed[f], ceil_div(table.cols, kElementwiseThreads), u32(n, "n_tokens"), kElementwiseThreads);
  d.tensor(0, table, table.rows, "embed table");
  d.tensor(1, tokens, n, "embed tokens");
  for (int64_t t = 0; t < n; ++t) {  // the kernel indexes the table with these
    const int32_t id = tokens.ptr<const int32_t>()[t];
    check(id >= 0 && id < table.rows, ErrorCode::kInvalidArgument, kWhere,
          "embed: token " + std::to_string(t) + ": expected an id in [0, " + std::to_string(table.rows) + "), got " +
              std::to_string(id));
  }
  d.tensor(2, out, n, "embed out");
  const EmbedArgs a{u32(table.cols, "cols"), u32(static_cast<int64_t>(table.row_stride), "row_bytes"),
                    elem_stride(out, "embed out"), c.p.scale};
  d.args(3, a);
  submit(d);
}

void MetalEmuDevice::rms_norm(const OpCall& c) {
  const Tensor& x = c.t[0];
  const Tensor& out = c.t[2];
  const int64_t n = c.p.n_tokens;
  const int f = float_index(x.dtype);
  check(f >= 0 && out.dtype == x.dtype && c.t[1].dtype == DType::kF32 && c.t[1].cols == x.cols && out.cols == x.cols,
        ErrorCode::kInvalidArgument, kWhere,
        "rms_norm: expected x, out of one float type and an F32 weight of x's width");
  static constexpr const char* kNames[] = {"rms_norm_f32", "rms_norm_f16"};
  Dispatch d(kNames[f], u32(n, "n_tokens"), 1, stride_threads(x.cols));
  d.tensor(0, x, n, "rms_norm x");
  d.tensor(1, c.t[1], 1, "rms_norm weight");
  d.tensor(2, out, n, "rms_norm out");
  const RmsNormArgs a{u32(x.cols, "cols"), elem_stride(x, "rms_norm x"), elem_stride(out, "rms_norm out"), c.p.eps};
  d.args(3, a);
  submit(d);
}

void MetalEmuDevice::matmul(const OpCall& c) {
  const Tensor& x = c.t[0];
  const int64_t n = c.p.n_tokens;
  check(c.p.n_weights >= 1 && c.p.n_weights <= 3, ErrorCode::kInvalidArgument, kWhere,
        "matmul: n_weights: expected 1..3, got " + std::to_string(c.p.n_weights));
  check(x.dtype == DType::kF32, ErrorCode::kInvalidArgument, kWhere, "matmul: expected F32 activations");
  const uint32_t x_stride = elem_stride(x, "matmul x");
  // DEBT: prefill runs the decode GEMV with one grid row per token, streaming each weight once per
  // token; the simdgroup_matrix GEMM for prefill is owed (issue #4).
  for (int i = 0; i < c.p.n_weights; ++i) {
    const Tensor& w = c.t[1 + i];
    const Tensor& bias = c.t[4 + i];
    const Tensor& out = c.t[7 + i];
    const int f = fmt_index(w.dtype);
    check(f >= 0, ErrorCode::kUnsupportedDType, kWhere,
          std::string("matmul: no gemv kernel for ") + dtype_name(w.dtype));
    check(w.cols == x.cols && out.cols >= w.rows && out.dtype == DType::kF32, ErrorCode::kShapeMismatch, kWhere,
          "matmul: weight " + std::to_string(i) + " is " + std::to_string(w.rows) + "x" + std::to_string(w.cols) +
              ", x has " + std::to_string(x.cols) + " columns, out " + std::to_string(out.cols));
    Dispatch d(kGemv[f], ceil_div(w.rows, kGemvRowsPerGroup), u32(n, "n_tokens"), kGemvSimdgroups * 32);
    d.tensor(0, w, w.rows, "matmul weight");
    d.tensor(1, x, n, "matmul x");
    if (bias.valid()) {
      check(bias.dtype == DType::kF32 && bias.cols == w.rows, ErrorCode::kShapeMismatch, kWhere,
            "matmul: bias " + std::to_string(i) + ": expected F32 of " + std::to_string(w.rows) + " values");
      d.tensor(2, bias, 1, "matmul bias");
    } else {
      d.raw(2, &kZero, sizeof(kZero));  // declared by the kernel, read only when has_bias
    }
    d.tensor(3, out, n, "matmul out");
    const GemvArgs a{u32(w.rows, "rows"),
                     u32(w.cols, "cols"),
                     u32(static_cast<int64_t>(w.row_stride), "row_bytes"),
                     x_stride,
                     elem_stride(out, "matmul out"),
                     c.p.accumulate ? 1u : 0u,
                     bias.valid() ? 1u : 0u,
                     0u};
    d.args(4, a);
    submit(d);
  }
}

void MetalEmuDevice::rope_kv(const OpCall& c) {
  const Tensor& kc = c.t[3];
  const Tensor& vc = c.t[4];
  const OpParams& p = c.p;
  const int f = float_index(kc.dtype);
  check(f >= 0 && vc.dtype == kc.dtype, ErrorCode::kUnsupportedDType, kWhere,
        "rope_kv: expected an F32 or F16 KV cache, got " + std::string(dtype_name(kc.dtype)));
  check(p.head_dim > 0 && p.head_dim % 2 == 0 && kc.cols == p.head_dim &&
            kc.row_stride == row_bytes(kc.dtype, p.head_dim) && kc.rows >= p.n_head_kv * p.kv_capacity && p.pos0 >= 0 &&
            p.pos0 + p.n_tokens <= p.kv_capacity && c.t[5].cols == p.head_dim / 2,
        ErrorCode::kInvalidArgument, kWhere, "rope_kv: cache, positions or inv_freq do not match the op's shape");
  static constexpr const char* kNames[] = {"rope_kv_f32", "rope_kv_f16"};
  Dispatch d(kNames[f], u32(p.n_tokens, "n_tokens"), 1,
             stride_threads(static_cast<int64_t>(p.n_head + p.n_head_kv) * p.head_dim / 2));
  d.tensor(0, c.t[0], p.n_tokens, "rope q");
  d.tensor(1, c.t[1], p.n_tokens, "rope k");
  d.tensor(2, c.t[2], p.n_tokens, "rope v");
  d.tensor(3, kc, kc.rows, "K cache");
  d.tensor(4, vc, vc.rows, "V cache");
  d.tensor(5, c.t[5], 1, "inv_freq");
  const RopeKvArgs a{u32(p.n_head, "n_head"),
                     u32(p.n_head_kv, "n_head_kv"),
                     u32(p.head_dim, "head_dim"),
                     p.neox ? 1u : 0u,
                     u32(p.pos0, "pos0"),
                     u32(p.kv_capacity, "kv_capacity"),
                     elem_stride(c.t[0], "rope q"),
                     elem_stride(c.t[1], "rope k"),
                     elem_stride(c.t[2], "rope v"),
                     0u,
                     0u,
                     0u};
  d.args(6, a);
  submit(d);
}

void MetalEmuDevice::attention(const OpCall& c) {
  const Tensor& kc = c.t[1];
  const Tensor& vc = c.t[2];
  const OpParams& p = c.p;
  const int f = float_index(kc.dtype);
  check(f >= 0 && vc.dtype == kc.dtype, ErrorCode::kUnsupportedDType, kWhere,
        "attention: expected an F32 or F16 KV cache, got " + std::string(dtype_name(kc.dtype)));
  check(p.head_dim >= 1 && p.head_dim <= static_cast<int32_t>(kAttnMaxHeadDim) && p.n_head_kv > 0 &&
            p.n_head % p.n_head_kv == 0 && kc.cols == p.head_dim && kc.row_stride == row_bytes(kc.dtype, p.head_dim) &&
            kc.rows >= p.n_head_kv * p.kv_capacity && p.pos0 >= 0 && p.pos0 + p.n_tokens <= p.kv_capacity,
        ErrorCode::kInvalidArgument, kWhere, "attention: heads, cache or positions do not match the op's shape");
  // DEBT: prefill runs attention_decode (one query row per threadgroup, grid y = tokens, causal
  // length pos0 + t + 1), re-reading the KV prefix for every query; flash attention is owed.
  static constexpr const char* kNames[] = {"attention_decode_f32", "attention_decode_f16"};
  Dispatch d(kNames[f], u32(p.n_head, "n_head"), u32(p.n_tokens, "n_tokens"), kAttnSimdgroups * 32);
  d.tensor(0, c.t[0], p.n_tokens, "attention q");
  d.tensor(1, kc, kc.rows, "K cache");
  d.tensor(2, vc, vc.rows, "V cache");
  d.tensor(3, c.t[3], p.n_tokens, "attention out");
  const AttnArgs a{u32(p.n_head, "n_head"),
                   u32(p.n_head_kv, "n_head_kv"),
                   u32(p.head_dim, "head_dim"),
                   u32(p.pos0, "pos0"),
                   u32(p.kv_capacity, "kv_capacity"),
                   elem_stride(c.t[0], "attention q"),
                   elem_stride(c.t[3], "attention out"),
                   p.scale};
  d.args(4, a);
  submit(d);
}

void MetalEmuDevice::swiglu(const OpCall& c) {
  const Tensor& g = c.t[0];
  const Tensor& u = c.t[1];
  check(g.dtype == DType::kF32 && u.dtype == DType::kF32 && u.cols == g.cols, ErrorCode::kInvalidArgument, kWhere,
        "swiglu: expected F32 gate and up of one width");
  Dispatch d("swiglu_f32", ceil_div(g.cols, kElementwiseThreads), u32(c.p.n_tokens, "n_tokens"), kElementwiseThreads);
  d.tensor(0, g, c.p.n_tokens, "swiglu gate");
  d.tensor(1, u, c.p.n_tokens, "swiglu up");
  const SwiGluArgs a{u32(g.cols, "cols"), elem_stride(g, "swiglu gate"), elem_stride(u, "swiglu up"), 0u};
  d.args(2, a);
  submit(d);
}

std::unique_ptr<Device> make_metal_emu_device(int threads, const DeviceLimits& limits) {
  return std::make_unique<MetalEmuDevice>(threads, limits);
}

}  // namespace metallic
