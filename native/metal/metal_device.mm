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
// Planning (which kernel, grid, bindings, argument structs, and the safety fence that checks
// every bound range lies inside its buffer) is the shared Metal plan (native/metal_plan/plan.h),
// the same code the emulated device runs on Linux; this file only encodes its Launches.
#include "metal/metal_device.h"

#import <Foundation/Foundation.h>
#import <Metal/Metal.h>
#include <mach/vm_page_size.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <limits>
#include <string>
#include <type_traits>
#include <unordered_map>

#include "core/error.h"
#include "core/module_path.h"
#include "metal_plan/plan.h"
#include "metal_shader_source.h"  // generated at build time by native/metal/embed_shaders.py

namespace metallic {

namespace {

constexpr const char* kWhere = "metal";
constexpr size_t kAlign = 64;

// "[metal] what: <NSError's description>" as a KernelFailure (nil error: "no details").
[[noreturn]] void fail_ns(ErrorCode code, const std::string& what, NSError* err) {
  const char* d = err != nil ? [[err localizedDescription] UTF8String] : nullptr;
  fail(code, kWhere, what + ": " + (d != nullptr ? d : "no details"));
}

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

class MetalDevice final : public MetalPlanDevice {
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
  void synchronize() override;

 protected:
  void encode(const Launch& l) override;

 private:
  id<MTLComputePipelineState> pipeline(const char* kernel);
  id<MTLComputeCommandEncoder> encoder();

  id<MTLDevice> device_ = nil;              // owned
  id<MTLCommandQueue> queue_ = nil;         // owned
  id<MTLLibrary> library_ = nil;            // owned; compiled at the first pipeline request
  id<MTLCommandBuffer> cmd_ = nil;          // retained while recording; nil when idle
  id<MTLComputeCommandEncoder> enc_ = nil;  // retained while recording
  std::unordered_map<std::string, id<MTLComputePipelineState>> pipelines_;  // owned values
  size_t page_ = 0;  // vm_page_size: the granule newBufferWithBytesNoCopy needs (16 KiB on Apple Silicon)
};

MetalDevice::MetalDevice(const DeviceLimits& limits) : MetalPlanDevice(kWhere, limits) {
  pooled([&] {
    device_ = MTLCreateSystemDefaultDevice();  // +1 (a Create function)
    if (device_ == nil)
      fail(ErrorCode::kDeviceUnavailable, kWhere,
           "MTLCreateSystemDefaultDevice returned no device (no Metal GPU on this system); device='cpu' or "
           "'metal-emulated' run the same plan without one");
    page_ = static_cast<size_t>(vm_page_size);
    std::string why;
    if (page_ == 0 || (page_ & (page_ - 1)) != 0) {
      why = "vm_page_size " + std::to_string(page_) + " is not a power of two";
    } else {
      queue_ = [device_ newCommandQueue];
      if (queue_ == nil) why = "cannot create a command queue";
    }
    if (!why.empty()) {
      [device_ release];
      device_ = nil;
      fail(ErrorCode::kDeviceUnavailable, kWhere, why);
    }
  });
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
    if (rounded > [device_ maxBufferLength])
      fail(ErrorCode::kOutOfMemory, kWhere,
           "alloc: " + std::to_string(nbytes) + " bytes exceed the device's largest buffer (" +
               std::to_string([device_ maxBufferLength]) + ")");
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
      fail(ErrorCode::kOutOfMemory, kWhere,
           "wrap_host: newBufferWithBytesNoCopy refused " + std::to_string(span) + " bytes at a " +
               std::to_string(page_) + "-byte page boundary");
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

// The library is loaded once (metallic.metallib, or the embedded source of all shaders/*.metal
// flattened by embed_shaders.py, compiled); each kernel's pipeline once at its first use, then
// cached by name.
id<MTLComputePipelineState> MetalDevice::pipeline(const char* kernel) {
  auto it = pipelines_.find(kernel);
  if (it != pipelines_.end()) return it->second;
  if (library_ == nil) {
    // metallic.metallib next to this module (built with the Metal compiler), else the embedded
    // source compiled now.
    NSError* err = nil;
    const std::string lib = module_dir() + "/metallic.metallib";
    if (access(lib.c_str(), R_OK) == 0) {
      NSURL* url = [NSURL fileURLWithPath:[NSString stringWithUTF8String:lib.c_str()]];
      library_ = [device_ newLibraryWithURL:url error:&err];
      if (library_ == nil) fail_ns(ErrorCode::kKernelFailure, "loading " + lib, err);
    } else {
      NSString* src = [NSString stringWithUTF8String:kMetalShaderSource];
      library_ = [device_ newLibraryWithSource:src options:nil error:&err];
      if (library_ == nil) fail_ns(ErrorCode::kKernelFailure, "compiling shaders/*.metal", err);
    }
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

// One Launch of the plan: pipeline, bindings (a wrapped host range may start inside its
// MTLBuffer, widened to whole pages, hence host - contents), then the dispatch.
void MetalDevice::encode(const Launch& l) {
  pooled([&] {
    id<MTLComputeCommandEncoder> enc = encoder();
    id<MTLComputePipelineState> p = pipeline(l.kernel);
    const NSUInteger threads = static_cast<NSUInteger>(l.threads[0]) * l.threads[1] * l.threads[2];
    if (threads > [p maxTotalThreadsPerThreadgroup])
      fail(ErrorCode::kKernelFailure, kWhere,
           std::string(l.kernel) + ": expected at most " + std::to_string([p maxTotalThreadsPerThreadgroup]) +
               " threads per threadgroup, the plan needs " + std::to_string(threads));
    [enc setComputePipelineState:p];
    for (int i = 0; i < l.n_bindings; ++i) {
      const Binding& b = l.bind[i];
      const NSUInteger at = static_cast<NSUInteger>(i);
      switch (b.kind) {
        case Binding::Kind::kUnbound: break;
        case Binding::Kind::kBuffer: {
          if (b.buf.handle == nullptr)
            fail(ErrorCode::kInvalidArgument, kWhere,
                 std::string(l.kernel) + ": buffer(" + std::to_string(i) + ") is not a Metal buffer");
          id<MTLBuffer> mb = (id<MTLBuffer>)b.buf.handle;
          const size_t base =
              static_cast<size_t>(static_cast<const char*>(b.buf.host) - static_cast<const char*>([mb contents]));
          // The plan fenced [offset, offset + extent) inside the Buffer; this fences the Buffer's
          // bytes inside the MTLBuffer (Metal's rule: a bound offset lies inside its buffer).
          const size_t len = [mb length];
          if (base + b.offset >= len || b.extent > len - base - b.offset)
            fail(ErrorCode::kInvalidArgument, kWhere,
                 std::string(l.kernel) + ": buffer(" + std::to_string(i) + ") range [" +
                     std::to_string(base + b.offset) + ", +" + std::to_string(b.extent) +
                     ") outside its MTLBuffer of " + std::to_string(len) + " bytes");
          [enc setBuffer:mb offset:base + b.offset atIndex:at];
          break;
        }
        case Binding::Kind::kBytes: [enc setBytes:b.bytes length:b.nbytes atIndex:at]; break;
      }
    }
    [enc dispatchThreadgroups:MTLSizeMake(l.groups[0], l.groups[1], l.groups[2])
        threadsPerThreadgroup:MTLSizeMake(l.threads[0], l.threads[1], l.threads[2])];
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

std::unique_ptr<Device> make_metal_device(int /*threads*/, const DeviceLimits& limits) {
  return std::make_unique<MetalDevice>(limits);
}

}  // namespace metallic
