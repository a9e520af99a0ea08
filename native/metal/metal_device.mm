// The Metal device (metal_device.h). The only Objective-C++ in the project: every Metal object
// stays inside this file; callers see Buffer.handle as an opaque pointer.
//
// Memory management: manual retain/release (built with -fno-objc-arc, see CMakeLists.txt).
// Objects from new*/alloc are owned and released here; the command buffer (autoreleased by
// -commandBuffer) is retained while it is being recorded. Every entry point that touches Metal
// runs inside an autorelease pool (pooled() below), since the calling threads (Python's) have no pool of their own.
//
// Errors: NSError and nil results become metallic::Error at this boundary: no device →
// DeviceUnavailable; shader library / pipeline / command buffer failures → KernelFailure with
// the NSError's localizedDescription; allocation failures → OutOfMemory.
//
// Execution: run() encodes dispatches into the current command buffer (one compute encoder,
// serial dispatch order so each op sees the previous op's writes); synchronize() commits it and
// waits, once per decoded token. Buffers are StorageModeShared (unified memory): `host` is the
// CPU address of the same bytes the GPU reads.
//
// Safety fence (as in the emulator): each bound tensor is checked to lie inside its buffer for
// the rows the kernel touches, so a plan bug is a typed error here, not a GPU out-of-bounds read.
#include "metal/metal_device.h"

#import <Foundation/Foundation.h>
#import <Metal/Metal.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <limits>
#include <string>
#include <type_traits>
#include <unordered_map>

#include "core/error.h"
#include "metal_shader_source.h"  // generated at build time by native/metal/embed_shaders.py
#include "shaders/args.h"

namespace metallic {

namespace {

constexpr const char* kWhere = "metal";
constexpr size_t kAlign = 64;

// DEBT: the op → dispatch planning below (kernel-name tables, grid sizes, argument structs,
// extents) mirrors native/metal_emu/emu_device.cpp line for line; it should move into one plain
// C++ planner shared by both devices (native/metal_emu/ was out of scope for this change).

// Weight formats the gemv / embed kernels are instantiated for; -1: not covered.
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

int float_index(DType t) { return t == DType::kF32 ? 0 : (t == DType::kF16 ? 1 : -1); }

uint32_t u32(int64_t v, const char* what) {
  if (v < 0 || v > std::numeric_limits<uint32_t>::max())
    fail(ErrorCode::kInvalidArgument, kWhere, std::string(what) + ": expected 0..2^32-1, got " + std::to_string(v));
  return static_cast<uint32_t>(v);
}

uint32_t ceil_div(int64_t a, int64_t b) { return u32((a + b - 1) / b, "grid size"); }

uint32_t stride_threads(int64_t work) {
  return static_cast<uint32_t>(std::clamp<int64_t>((work + 31) / 32, 1, 8) * 32);
}

uint32_t elem_stride(const Tensor& t, const char* what) {
  const size_t e = dtype_info(t.dtype).block_bytes;
  if (dtype_info(t.dtype).block_elems != 1 || t.row_stride % e != 0)
    fail(ErrorCode::kInvalidArgument, kWhere,
         std::string(what) + ": expected a float or half tensor with whole-element rows, got " + dtype_name(t.dtype));
  return u32(static_cast<int64_t>(t.row_stride / e), what);
}

// "[metal] what: <NSError's description>" as a KernelFailure (nil error: "no details").
[[noreturn]] void fail_ns(ErrorCode code, const std::string& what, NSError* err) {
  const char* d = err != nil ? [[err localizedDescription] UTF8String] : nullptr;
  fail(code, kWhere, what + ": " + (d != nullptr ? d : "no details"));
}

const float kZero = 0.f;  // bound where a kernel declares a buffer the op does not use (no bias)

// Runs f inside an autorelease pool and rethrows its metallic::Error after the pool is drained:
// an exception unwinding through @autoreleasepool would skip the drain (leaking its objects).
template <typename F>
auto pooled(F&& f) -> decltype(f()) {
  std::exception_ptr error;
  if constexpr (std::is_void_v<decltype(f())>) {
    @autoreleasepool {
      try {
        f();
      } catch (...) {
        error = std::current_exception();
      }
    }
    if (error) std::rethrow_exception(error);
  } else {
    decltype(f()) result{};
    @autoreleasepool {
      try {
        result = f();
      } catch (...) {
        error = std::current_exception();
      }
    }
    if (error) std::rethrow_exception(error);
    return result;
  }
}

}  // namespace

class MetalDevice final : public Device {
 public:
  explicit MetalDevice(const DeviceLimits& limits);
  ~MetalDevice() override;
  MetalDevice(const MetalDevice&) = delete;
  MetalDevice& operator=(const MetalDevice&) = delete;

  const char* name() const override { return "metal"; }
  Buffer alloc(size_t nbytes) override;
  Buffer wrap_host(const void* ptr, size_t nbytes) override;
  void release(Buffer& buf) override;
  Tensor prepare_weight(const Tensor& view, bool) override { return view; }  // kernels read GGUF rows
  void copy_in(const Buffer& dst, size_t offset, const void* src, size_t nbytes) override;
  void copy_out(const Buffer& src, size_t offset, void* dst, size_t nbytes) override;
  bool supports(OpCode op, DType dtype) const override;
  void run(const OpCall& call) override;
  void synchronize() override;

 private:
  // One kernel launch: pipeline, bound buffers and argument struct, then dispatch.
  class Launch;

  id<MTLComputePipelineState> pipeline(const char* kernel);
  id<MTLComputeCommandEncoder> encoder();
  void embed(const OpCall& c);
  void rms_norm(const OpCall& c);
  void matmul(const OpCall& c);
  void rope_kv(const OpCall& c);
  void attention(const OpCall& c);
  void swiglu(const OpCall& c);

  id<MTLDevice> device_ = nil;              // owned
  id<MTLCommandQueue> queue_ = nil;         // owned
  id<MTLLibrary> library_ = nil;            // owned; compiled at the first pipeline request
  id<MTLCommandBuffer> cmd_ = nil;          // retained while recording; nil when idle
  id<MTLComputeCommandEncoder> enc_ = nil;  // retained while recording
  std::unordered_map<std::string, id<MTLComputePipelineState>> pipelines_;  // owned values
  size_t page_ = 4096;
};

class MetalDevice::Launch {
 public:
  Launch(MetalDevice& dev, const char* kernel, uint32_t gx, uint32_t gy, uint32_t threads)
      : enc_(dev.encoder()), groups_(MTLSizeMake(gx, gy, 1)), threads_(MTLSizeMake(threads, 1, 1)) {
    id<MTLComputePipelineState> p = dev.pipeline(kernel);
    if (threads > [p maxTotalThreadsPerThreadgroup])
      fail(ErrorCode::kKernelFailure, kWhere,
           std::string(kernel) + ": expected at most " + std::to_string([p maxTotalThreadsPerThreadgroup]) +
               " threads per threadgroup, the plan needs " + std::to_string(threads));
    [enc_ setComputePipelineState:p];
  }

  // Rows [0, rows) of a row-major tensor, bound at its offset inside the MTLBuffer. A wrapped host
  // range may start inside its MTLBuffer (widened to whole pages), hence host - contents.
  void tensor(int i, const Tensor& t, int64_t rows, const char* what) {
    if (!t.valid() || t.buf.handle == nullptr || t.layout != Layout::kRows)
      fail(ErrorCode::kInvalidArgument, kWhere, std::string(what) + ": expected a bound row-major Metal tensor");
    if (rows < 1 || rows > t.rows)
      fail(ErrorCode::kInvalidArgument, kWhere,
           std::string(what) + ": expected 1.." + std::to_string(t.rows) + " rows, got " + std::to_string(rows));
    const size_t extent = static_cast<size_t>(rows - 1) * t.row_stride + row_bytes(t.dtype, t.cols);
    if (t.offset > t.buf.nbytes || extent > t.buf.nbytes - t.offset)
      fail(ErrorCode::kInvalidArgument, kWhere,
           std::string(what) + ": " + std::to_string(rows) + " rows need " + std::to_string(extent) +
               " bytes from offset " + std::to_string(t.offset) + ", buffer has " + std::to_string(t.buf.nbytes));
    id<MTLBuffer> b = (id<MTLBuffer>)t.buf.handle;
    const size_t base =
        static_cast<size_t>(static_cast<const char*>(t.buf.host) - static_cast<const char*>([b contents]));
    [enc_ setBuffer:b offset:base + t.offset atIndex:static_cast<NSUInteger>(i)];
  }

  void zero(int i) { [enc_ setBytes:&kZero length:sizeof(kZero) atIndex:static_cast<NSUInteger>(i)]; }

  // The argument struct (shaders/args.h) by value: setBytes copies it into the command buffer.
  template <typename A>
  void args(int i, const A& a) {
    [enc_ setBytes:&a length:sizeof(A) atIndex:static_cast<NSUInteger>(i)];
  }

  void dispatch() { [enc_ dispatchThreadgroups:groups_ threadsPerThreadgroup:threads_]; }

 private:
  id<MTLComputeCommandEncoder> enc_;  // borrowed from the device
  MTLSize groups_;
  MTLSize threads_;
};

MetalDevice::MetalDevice(const DeviceLimits& limits) {
  if (limits.head_dim < 1 || limits.head_dim > static_cast<int32_t>(kAttnMaxHeadDim))
    fail(ErrorCode::kNotImplemented, kWhere,
         "head_dim: attention_decode covers 1.." + std::to_string(kAttnMaxHeadDim) + ", got " +
             std::to_string(limits.head_dim));
  pooled([&] {
    device_ = MTLCreateSystemDefaultDevice();  // +1 (a Create function)
    if (device_ == nil)
      fail(ErrorCode::kDeviceUnavailable, kWhere,
           "MTLCreateSystemDefaultDevice returned no device (no Metal GPU on this system); device='cpu' or "
           "'metal-emulated' run the same plan without one");
    queue_ = [device_ newCommandQueue];
    if (queue_ == nil) {
      [device_ release];
      device_ = nil;
      fail(ErrorCode::kDeviceUnavailable, kWhere, "cannot create a command queue");
    }
  });
  const long page = sysconf(_SC_PAGESIZE);
  if (page > 0) page_ = static_cast<size_t>(page);
}

MetalDevice::~MetalDevice() {
  @autoreleasepool {    // nothing here throws
    if (cmd_ != nil) {  // finish what was issued: buffers released next may still be in use
      [enc_ endEncoding];
      [cmd_ commit];
      [cmd_ waitUntilCompleted];
      [enc_ release];
      [cmd_ release];
    }
    for (auto& kv : pipelines_) [kv.second release];
    [library_ release];
    [queue_ release];
    [device_ release];
  }
}

Buffer MetalDevice::alloc(size_t nbytes) {
  const size_t rounded = std::max<size_t>((nbytes + kAlign - 1) / kAlign * kAlign, kAlign);
  return pooled([&] {
    id<MTLBuffer> b = [device_ newBufferWithLength:rounded options:MTLResourceStorageModeShared];
    if (b == nil) fail(ErrorCode::kOutOfMemory, kWhere, "cannot allocate " + std::to_string(nbytes) + " bytes");
    std::memset([b contents], 0, rounded);  // the interface promises zeroed memory
    return Buffer{[b contents], nbytes, (void*)b};
  });
}

// Zero copy always: Metal wraps only whole pages, so the range is widened to the pages holding
// its first and last byte (mapped in this process because they hold caller bytes) and `host` is
// the caller's pointer inside that MTLBuffer; Launch::tensor adds host - contents to offsets.
// The pages are never written through this buffer by the device unless the plan writes the
// tensor; no deallocator: the caller owns the memory and keeps it alive past release().
Buffer MetalDevice::wrap_host(const void* ptr, size_t nbytes) {
  if (ptr == nullptr || nbytes == 0)
    fail(ErrorCode::kInvalidArgument, kWhere, "wrap_host: expected a non-empty host range");
  const auto addr = reinterpret_cast<uintptr_t>(ptr);
  const uintptr_t first = addr / page_ * page_;
  const uintptr_t end = (addr + nbytes + page_ - 1) / page_ * page_;
  const size_t span = static_cast<size_t>(end - first);
  return pooled([&] {
    if (span > [device_ maxBufferLength])
      fail(ErrorCode::kOutOfMemory, kWhere,
           "wrap_host: " + std::to_string(span) + " bytes exceed the device's largest buffer (" +
               std::to_string([device_ maxBufferLength]) + ")");
    id<MTLBuffer> b = [device_ newBufferWithBytesNoCopy:reinterpret_cast<void*>(first)
                                                 length:span
                                                options:MTLResourceStorageModeShared
                                            deallocator:nil];
    if (b == nil)
      fail(ErrorCode::kOutOfMemory, kWhere, "wrap_host: Metal could not wrap " + std::to_string(span) + " bytes");
    return Buffer{const_cast<void*>(ptr), nbytes, (void*)b};
  });
}

// Command buffers retain the buffers they use, so releasing one with work in flight is safe.
void MetalDevice::release(Buffer& buf) {
  if (buf.handle != nullptr) {
    @autoreleasepool {
      [(id<MTLBuffer>)buf.handle release];
    }
  }
  buf = Buffer{};
}

// Host copies of shared memory: anything issued is finished first (a no-op when the plan has
// synchronized, as it does before reading logits and after writing tokens).
void MetalDevice::copy_in(const Buffer& dst, size_t offset, const void* src, size_t nbytes) {
  if (offset > dst.nbytes || nbytes > dst.nbytes - offset)
    fail(ErrorCode::kInvalidArgument, "metal.copy_in", "range outside buffer");
  if (cmd_ != nil) synchronize();
  std::memcpy(static_cast<char*>(dst.host) + offset, src, nbytes);
}

void MetalDevice::copy_out(const Buffer& src, size_t offset, void* dst, size_t nbytes) {
  if (offset > src.nbytes || nbytes > src.nbytes - offset)
    fail(ErrorCode::kInvalidArgument, "metal.copy_out", "range outside buffer");
  if (cmd_ != nil) synchronize();
  std::memcpy(dst, static_cast<const char*>(src.host) + offset, nbytes);
}

bool MetalDevice::supports(OpCode op, DType dtype) const {
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

// The library is compiled once from the embedded source (all shaders/*.metal flattened by
// embed_shaders.py); each kernel's pipeline once at its first use, then cached by name.
id<MTLComputePipelineState> MetalDevice::pipeline(const char* kernel) {
  auto it = pipelines_.find(kernel);
  if (it != pipelines_.end()) return it->second;
  if (library_ == nil) {
    NSError* err = nil;
    NSString* src = [NSString stringWithUTF8String:kMetalShaderSource];
    library_ = [device_ newLibraryWithSource:src options:nil error:&err];
    if (library_ == nil) fail_ns(ErrorCode::kKernelFailure, "compiling shaders/*.metal", err);
  }
  id<MTLFunction> fn = [library_ newFunctionWithName:[NSString stringWithUTF8String:kernel]];
  if (fn == nil)
    fail(ErrorCode::kKernelFailure, kWhere, std::string("kernel ") + kernel + ": not found in the shader library");
  NSError* err = nil;
  id<MTLComputePipelineState> p = [device_ newComputePipelineStateWithFunction:fn error:&err];
  [fn release];
  if (p == nil) fail_ns(ErrorCode::kKernelFailure, std::string("pipeline ") + kernel, err);
  pipelines_.emplace(kernel, p);
  return p;
}

id<MTLComputeCommandEncoder> MetalDevice::encoder() {
  if (cmd_ == nil) {
    cmd_ = [[queue_ commandBuffer] retain];
    if (cmd_ == nil) fail(ErrorCode::kKernelFailure, kWhere, "cannot create a command buffer");
    enc_ = [[cmd_ computeCommandEncoder] retain];
    if (enc_ == nil) {
      [cmd_ release];
      cmd_ = nil;
      fail(ErrorCode::kKernelFailure, kWhere, "cannot create a compute command encoder");
    }
  }
  return enc_;
}

void MetalDevice::run(const OpCall& call) {
  pooled([&] {
    switch (call.op) {
      case OpCode::kEmbed: embed(call); return;
      case OpCode::kRmsNorm: rms_norm(call); return;
      case OpCode::kMatMul: matmul(call); return;
      case OpCode::kRopeKv: rope_kv(call); return;
      case OpCode::kAttention: attention(call); return;
      case OpCode::kSwiGlu: swiglu(call); return;
    }
    fail(ErrorCode::kKernelFailure, "metal.run", "unknown op");
  });
}

void MetalDevice::synchronize() {
  if (cmd_ == nil) return;
  pooled([&] {
    id<MTLCommandBuffer> cmd = cmd_;
    [enc_ endEncoding];
    [enc_ release];
    enc_ = nil;
    cmd_ = nil;
    [cmd commit];
    [cmd waitUntilCompleted];
    const bool failed = [cmd status] == MTLCommandBufferStatusError;
    NSError* err = failed ? [[[cmd error] retain] autorelease] : nil;
    [cmd release];
    if (failed) fail_ns(ErrorCode::kKernelFailure, "command buffer failed", err);
  });
}

void MetalDevice::embed(const OpCall& c) {
  const Tensor& table = c.t[0];
  const Tensor& tokens = c.t[1];
  const Tensor& out = c.t[2];
  const int64_t n = c.p.n_tokens;
  const int f = fmt_index(table.dtype);
  if (f < 0) fail(ErrorCode::kUnsupportedDType, kWhere, std::string("embed: no kernel for ") + dtype_name(table.dtype));
  if (out.cols != table.cols) fail(ErrorCode::kShapeMismatch, kWhere, "embed: output width differs from the table");
  Launch d(*this, kEmbed[f], ceil_div(table.cols, kElementwiseThreads), u32(n, "n_tokens"), kElementwiseThreads);
  d.tensor(0, table, table.rows, "embed table");
  d.tensor(1, tokens, n, "embed tokens");
  for (int64_t t = 0; t < n; ++t) {  // written by copy_in (host), read here before the GPU does
    const int32_t id = tokens.ptr<const int32_t>()[t];
    if (id < 0 || id >= table.rows)
      fail(ErrorCode::kInvalidArgument, kWhere,
           "embed: token " + std::to_string(t) + ": expected an id in [0, " + std::to_string(table.rows) + "), got " +
               std::to_string(id));
  }
  d.tensor(2, out, n, "embed out");
  d.args(3, EmbedArgs{u32(table.cols, "cols"), u32(static_cast<int64_t>(table.row_stride), "row_bytes"),
                      elem_stride(out, "embed out"), c.p.scale});
  d.dispatch();
}

void MetalDevice::rms_norm(const OpCall& c) {
  const Tensor& x = c.t[0];
  const Tensor& out = c.t[2];
  const int64_t n = c.p.n_tokens;
  const int f = float_index(x.dtype);
  if (f < 0 || out.dtype != x.dtype || c.t[1].dtype != DType::kF32 || c.t[1].cols != x.cols || out.cols != x.cols)
    fail(ErrorCode::kInvalidArgument, kWhere,
         "rms_norm: expected x, out of one float type and an F32 weight of x's width");
  static constexpr const char* kNames[] = {"rms_norm_f32", "rms_norm_f16"};
  Launch d(*this, kNames[f], u32(n, "n_tokens"), 1, stride_threads(x.cols));
  d.tensor(0, x, n, "rms_norm x");
  d.tensor(1, c.t[1], 1, "rms_norm weight");
  d.tensor(2, out, n, "rms_norm out");
  d.args(3, RmsNormArgs{u32(x.cols, "cols"), elem_stride(x, "rms_norm x"), elem_stride(out, "rms_norm out"), c.p.eps});
  d.dispatch();
}

void MetalDevice::matmul(const OpCall& c) {
  const Tensor& x = c.t[0];
  const int64_t n = c.p.n_tokens;
  if (c.p.n_weights < 1 || c.p.n_weights > 3)
    fail(ErrorCode::kInvalidArgument, kWhere, "matmul: n_weights: expected 1..3, got " + std::to_string(c.p.n_weights));
  if (x.dtype != DType::kF32) fail(ErrorCode::kInvalidArgument, kWhere, "matmul: expected F32 activations");
  const uint32_t x_stride = elem_stride(x, "matmul x");
  // DEBT: prefill runs the decode GEMV with one grid row per token (as in the emulator); the
  // simdgroup_matrix GEMM for prefill is owed (issue #4).
  for (int i = 0; i < c.p.n_weights; ++i) {
    const Tensor& w = c.t[1 + i];
    const Tensor& bias = c.t[4 + i];
    const Tensor& out = c.t[7 + i];
    const int f = fmt_index(w.dtype);
    if (f < 0)
      fail(ErrorCode::kUnsupportedDType, kWhere, std::string("matmul: no gemv kernel for ") + dtype_name(w.dtype));
    if (w.cols != x.cols || out.cols < w.rows || out.dtype != DType::kF32)
      fail(ErrorCode::kShapeMismatch, kWhere,
           "matmul: weight " + std::to_string(i) + " is " + std::to_string(w.rows) + "x" + std::to_string(w.cols) +
               ", x has " + std::to_string(x.cols) + " columns, out " + std::to_string(out.cols));
    Launch d(*this, kGemv[f], ceil_div(w.rows, kGemvRowsPerGroup), u32(n, "n_tokens"), kGemvSimdgroups * 32);
    d.tensor(0, w, w.rows, "matmul weight");
    d.tensor(1, x, n, "matmul x");
    if (bias.valid()) {
      if (bias.dtype != DType::kF32 || bias.cols != w.rows)
        fail(ErrorCode::kShapeMismatch, kWhere,
             "matmul: bias " + std::to_string(i) + ": expected F32 of " + std::to_string(w.rows) + " values");
      d.tensor(2, bias, 1, "matmul bias");
    } else {
      d.zero(2);  // declared by the kernel, read only when has_bias
    }
    d.tensor(3, out, n, "matmul out");
    d.args(4, GemvArgs{u32(w.rows, "rows"), u32(w.cols, "cols"), u32(static_cast<int64_t>(w.row_stride), "row_bytes"),
                       x_stride, elem_stride(out, "matmul out"), c.p.accumulate ? 1u : 0u, bias.valid() ? 1u : 0u, 0u});
    d.dispatch();
  }
}

void MetalDevice::rope_kv(const OpCall& c) {
  const Tensor& kc = c.t[3];
  const Tensor& vc = c.t[4];
  const OpParams& p = c.p;
  const int f = float_index(kc.dtype);
  if (f < 0 || vc.dtype != kc.dtype)
    fail(ErrorCode::kUnsupportedDType, kWhere,
         "rope_kv: expected an F32 or F16 KV cache, got " + std::string(dtype_name(kc.dtype)));
  if (!(p.head_dim > 0 && p.head_dim % 2 == 0 && kc.cols == p.head_dim &&
        kc.row_stride == row_bytes(kc.dtype, p.head_dim) && kc.rows >= p.n_head_kv * p.kv_capacity && p.pos0 >= 0 &&
        p.pos0 + p.n_tokens <= p.kv_capacity && c.t[5].cols == p.head_dim / 2))
    fail(ErrorCode::kInvalidArgument, kWhere, "rope_kv: cache, positions or inv_freq do not match the op's shape");
  static constexpr const char* kNames[] = {"rope_kv_f32", "rope_kv_f16"};
  Launch d(*this, kNames[f], u32(p.n_tokens, "n_tokens"), 1,
           stride_threads(static_cast<int64_t>(p.n_head + p.n_head_kv) * p.head_dim / 2));
  d.tensor(0, c.t[0], p.n_tokens, "rope q");
  d.tensor(1, c.t[1], p.n_tokens, "rope k");
  d.tensor(2, c.t[2], p.n_tokens, "rope v");
  d.tensor(3, kc, kc.rows, "K cache");
  d.tensor(4, vc, vc.rows, "V cache");
  d.tensor(5, c.t[5], 1, "inv_freq");
  d.args(6, RopeKvArgs{u32(p.n_head, "n_head"), u32(p.n_head_kv, "n_head_kv"), u32(p.head_dim, "head_dim"),
                       p.neox ? 1u : 0u, u32(p.pos0, "pos0"), u32(p.kv_capacity, "kv_capacity"),
                       elem_stride(c.t[0], "rope q"), elem_stride(c.t[1], "rope k"), elem_stride(c.t[2], "rope v"), 0u,
                       0u, 0u});
  d.dispatch();
}

void MetalDevice::attention(const OpCall& c) {
  const Tensor& kc = c.t[1];
  const Tensor& vc = c.t[2];
  const OpParams& p = c.p;
  const int f = float_index(kc.dtype);
  if (f < 0 || vc.dtype != kc.dtype)
    fail(ErrorCode::kUnsupportedDType, kWhere,
         "attention: expected an F32 or F16 KV cache, got " + std::string(dtype_name(kc.dtype)));
  if (!(p.head_dim >= 1 && p.head_dim <= static_cast<int32_t>(kAttnMaxHeadDim) && p.n_head_kv > 0 &&
        p.n_head % p.n_head_kv == 0 && kc.cols == p.head_dim && kc.row_stride == row_bytes(kc.dtype, p.head_dim) &&
        kc.rows >= p.n_head_kv * p.kv_capacity && p.pos0 >= 0 && p.pos0 + p.n_tokens <= p.kv_capacity))
    fail(ErrorCode::kInvalidArgument, kWhere, "attention: heads, cache or positions do not match the op's shape");
  // DEBT: prefill runs attention_decode (grid y = tokens), re-reading the KV prefix per query;
  // flash attention is owed (issue #4).
  static constexpr const char* kNames[] = {"attention_decode_f32", "attention_decode_f16"};
  Launch d(*this, kNames[f], u32(p.n_head, "n_head"), u32(p.n_tokens, "n_tokens"), kAttnSimdgroups * 32);
  d.tensor(0, c.t[0], p.n_tokens, "attention q");
  d.tensor(1, kc, kc.rows, "K cache");
  d.tensor(2, vc, vc.rows, "V cache");
  d.tensor(3, c.t[3], p.n_tokens, "attention out");
  d.args(4, AttnArgs{u32(p.n_head, "n_head"), u32(p.n_head_kv, "n_head_kv"), u32(p.head_dim, "head_dim"),
                     u32(p.pos0, "pos0"), u32(p.kv_capacity, "kv_capacity"), elem_stride(c.t[0], "attention q"),
                     elem_stride(c.t[3], "attention out"), p.scale});
  d.dispatch();
}

void MetalDevice::swiglu(const OpCall& c) {
  const Tensor& g = c.t[0];
  const Tensor& u = c.t[1];
  if (g.dtype != DType::kF32 || u.dtype != DType::kF32 || u.cols != g.cols)
    fail(ErrorCode::kInvalidArgument, kWhere, "swiglu: expected F32 gate and up of one width");
  Launch d(*this, "swiglu_f32", ceil_div(g.cols, kElementwiseThreads), u32(c.p.n_tokens, "n_tokens"),
           kElementwiseThreads);
  d.tensor(0, g, c.p.n_tokens, "swiglu gate");
  d.tensor(1, u, c.p.n_tokens, "swiglu up");
  d.args(2, SwiGluArgs{u32(g.cols, "cols"), elem_stride(g, "swiglu gate"), elem_stride(u, "swiglu up"), 0u});
  d.dispatch();
}

std::unique_ptr<Device> make_metal_device(int /*threads*/, const DeviceLimits& limits) {
  return std::make_unique<MetalDevice>(limits);
}

}  // namespace metallic
