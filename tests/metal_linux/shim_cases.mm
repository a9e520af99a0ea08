// Precondition cases for the Linux Metal runtime (native/metal_linux/mtlshim.h), driven by
// tests/python/test_metal_linux.py: `shim_cases CASE` breaks one rule Apple documents for the
// Metal calls native/metal/metal_device.mm makes, and checks that the runtime reports it the way
// Metal reports failures (nil, or a command buffer ending in MTLCommandBufferStatusError with an
// NSError) and counts it as a violation, without crashing. Exit 0: reported as expected; 1: not.
// `shim_cases balanced` does everything right and must report nothing and leave no object alive;
// `shim_cases leak` leaks one buffer on purpose (LeakSanitizer and the live count must see it).
#import <Foundation/Foundation.h>
#import <Metal/Metal.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <string>

#include "metal_linux/mtlshim.h"

namespace {

int64_t g_violations_at_start = 0;

bool expect(bool ok, const char* what) {
  if (!ok) std::fprintf(stderr, "shim_cases: expected %s\n", what);
  return ok;
}

bool new_violation(const char* needle) {
  const int64_t n = mtlshim_violation_count();
  for (int64_t i = g_violations_at_start; i < n; ++i) {
    const char* v = mtlshim_violation(i);
    if (v != nullptr && std::strstr(v, needle) != nullptr) return true;
  }
  std::fprintf(stderr, "shim_cases: no violation containing '%s' (%lld seen)\n", needle,
               static_cast<long long>(n - g_violations_at_start));
  return false;
}

// The command buffer ended in error and its NSError names `needle`.
bool failed_with(id<MTLCommandBuffer> cb, const char* needle) {
  if (!expect([cb status] == MTLCommandBufferStatusError, "status MTLCommandBufferStatusError")) return false;
  const char* d = [[[cb error] localizedDescription] UTF8String];
  if (d == nullptr || std::strstr(d, needle) == nullptr) {
    std::fprintf(stderr, "shim_cases: error '%s' does not name '%s'\n", d != nullptr ? d : "(none)", needle);
    return false;
  }
  return true;
}

struct Env {
  id<MTLDevice> device = nil;
  id<MTLCommandQueue> queue = nil;
  id<MTLLibrary> library = nil;
  id<MTLComputePipelineState> pipeline = nil;  // "swiglu_f32": gate = silu(gate) * up
  id<MTLBuffer> buf = nil;                     // 4096 bytes

  bool open() {
    device = MTLCreateSystemDefaultDevice();
    if (!expect(device != nil, "a device")) return false;
    queue = [device newCommandQueue];
    NSError* err = nil;
    library = [device newLibraryWithSource:@"METALLIC_KERNEL(\"swiglu_f32\", swiglu, float)" options:nil error:&err];
    if (!expect(library != nil, "a library")) return false;
    id<MTLFunction> fn = [library newFunctionWithName:@"swiglu_f32"];
    if (!expect(fn != nil, "function swiglu_f32")) return false;
    pipeline = [device newComputePipelineStateWithFunction:fn error:&err];
    [fn release];
    buf = [device newBufferWithLength:4096 options:MTLResourceStorageModeShared];
    return expect(pipeline != nil && buf != nil, "a pipeline and a buffer");
  }
  ~Env() {
    [buf release];
    [pipeline release];
    [library release];
    [queue release];
    [device release];
  }
};

using Case = std::function<bool(Env&)>;

// One correct-or-not swiglu dispatch over 64 floats of e.buf (gate at byte 0, up at byte 256),
// committed and not waited on; bind_up = false leaves buffer(1) unbound, which the emulator
// rejects when the command buffer runs.
id<MTLCommandBuffer> commit_swiglu(Env& e, bool bind_up = true) {
  id<MTLCommandBuffer> cb = [e.queue commandBuffer];
  id<MTLComputeCommandEncoder> enc = [cb computeCommandEncoder];
  [enc setComputePipelineState:e.pipeline];
  [enc setBuffer:e.buf offset:0 atIndex:0];
  if (bind_up) [enc setBuffer:e.buf offset:256 atIndex:1];
  const uint32_t n[4] = {64, 0, 0, 0};  // SwiGluArgs: cols, gate_stride, up_stride, gelu
  [enc setBytes:n length:sizeof(n) atIndex:2];
  [enc dispatchThreadgroups:MTLSizeMake(1, 1, 1) threadsPerThreadgroup:MTLSizeMake(64, 1, 1)];
  [enc endEncoding];
  [cb commit];
  return cb;
}

const std::map<std::string, Case>& cases() {
  static const std::map<std::string, Case> m = {
      {"balanced",
       [](Env& e) {
         // A correct swiglu dispatch: results checked, nothing reported.
         float* x = static_cast<float*>([e.buf contents]);
         for (int i = 0; i < 64; ++i) x[i] = 1.0f;       // gate
         for (int i = 0; i < 64; ++i) x[64 + i] = 2.0f;  // up
         id<MTLCommandBuffer> cb = commit_swiglu(e);
         [cb waitUntilCompleted];
         const float want = 1.0f / (1.0f + std::exp(-1.0f)) * 2.0f;
         return expect([cb status] == MTLCommandBufferStatusCompleted, "status Completed") &&
                expect(std::fabs(x[0] - want) < 1e-6f && std::fabs(x[63] - want) < 1e-6f, "silu(1) * 2") &&
                expect(mtlshim_violation_count() == g_violations_at_start, "no violation");
       }},
      {"nocopy_misaligned_pointer",
       [](Env& e) {
         void* p = std::aligned_alloc(4096, 3 * 16384);
         char* q = static_cast<char*>(p) + (reinterpret_cast<uintptr_t>(p) % 16384 == 0 ? 4096 : 0);
         id<MTLBuffer> b = [e.device newBufferWithBytesNoCopy:q
                                                       length:16384
                                                      options:MTLResourceStorageModeShared
                                                  deallocator:nil];
         std::free(p);
         return expect(b == nil, "nil") && new_violation("not page-aligned");
       }},
      {"nocopy_partial_page",
       [](Env& e) {
         void* p = std::aligned_alloc(16384, 2 * 16384);
         id<MTLBuffer> b = [e.device newBufferWithBytesNoCopy:p
                                                       length:16384 + 4096
                                                      options:MTLResourceStorageModeShared
                                                  deallocator:nil];
         std::free(p);
         return expect(b == nil, "nil") && new_violation("not a positive multiple of the page size");
       }},
      {"nocopy_deallocator_runs",
       [](Env& e) {
         void* p = std::aligned_alloc(16384, 16384);
         __block void* freed = nullptr;
         id<MTLBuffer> b = [e.device newBufferWithBytesNoCopy:p
                                                       length:16384
                                                      options:MTLResourceStorageModeShared
                                                  deallocator:^(void* ptr, NSUInteger) {
                                                    freed = ptr;
                                                    std::free(ptr);
                                                  }];
         [b release];
         return expect(freed == p, "the deallocator called with the pointer");
       }},
      {"buffer_too_long",
       [](Env& e) {
         id<MTLBuffer> b = [e.device newBufferWithLength:[e.device maxBufferLength] + 1
                                                 options:MTLResourceStorageModeShared];
         return expect(b == nil, "nil") && new_violation("maxBufferLength");
       }},
      {"offset_outside_buffer",
       [](Env& e) {
         id<MTLCommandBuffer> cb = [e.queue commandBuffer];
         id<MTLComputeCommandEncoder> enc = [cb computeCommandEncoder];
         [enc setComputePipelineState:e.pipeline];
         [enc setBuffer:e.buf offset:4096 atIndex:0];
         [enc endEncoding];
         [cb commit];
         [cb waitUntilCompleted];
         return new_violation("offset 4096 outside") && failed_with(cb, "offset 4096 outside");
       }},
      {"set_bytes_too_long",
       [](Env& e) {
         static char big[4097];
         id<MTLCommandBuffer> cb = [e.queue commandBuffer];
         id<MTLComputeCommandEncoder> enc = [cb computeCommandEncoder];
         [enc setBytes:big length:sizeof(big) atIndex:3];
         [enc endEncoding];
         [cb commit];
         [cb waitUntilCompleted];
         return new_violation("expected 1..4096 bytes") && failed_with(cb, "4097");
       }},
      {"too_many_threads",
       [](Env& e) {
         id<MTLCommandBuffer> cb = [e.queue commandBuffer];
         id<MTLComputeCommandEncoder> enc = [cb computeCommandEncoder];
         [enc setComputePipelineState:e.pipeline];
         const NSUInteger too_many = [e.pipeline maxTotalThreadsPerThreadgroup] + 32;
         [enc dispatchThreadgroups:MTLSizeMake(1, 1, 1) threadsPerThreadgroup:MTLSizeMake(too_many, 1, 1)];
         [enc endEncoding];
         [cb commit];
         [cb waitUntilCompleted];
         return new_violation("exceed maxTotalThreadsPerThreadgroup") &&
                failed_with(cb, "maxTotalThreadsPerThreadgroup");
       }},
      {"dispatch_without_pipeline",
       [](Env& e) {
         id<MTLCommandBuffer> cb = [e.queue commandBuffer];
         id<MTLComputeCommandEncoder> enc = [cb computeCommandEncoder];
         [enc dispatchThreadgroups:MTLSizeMake(1, 1, 1) threadsPerThreadgroup:MTLSizeMake(32, 1, 1)];
         [enc endEncoding];
         [cb commit];
         [cb waitUntilCompleted];
         return new_violation("without a compute pipeline") && failed_with(cb, "without a compute pipeline");
       }},
      {"commit_with_open_encoder",
       [](Env& e) {
         id<MTLCommandBuffer> cb = [e.queue commandBuffer];
         id<MTLComputeCommandEncoder> enc = [cb computeCommandEncoder];
         [cb commit];
         [enc endEncoding];  // too late
         [cb waitUntilCompleted];
         return new_violation("commit with an encoder still open") && failed_with(cb, "encoder still open");
       }},
      {"encode_after_end",
       [](Env& e) {
         id<MTLCommandBuffer> cb = [e.queue commandBuffer];
         id<MTLComputeCommandEncoder> enc = [cb computeCommandEncoder];
         [enc endEncoding];
         [enc setComputePipelineState:e.pipeline];
         [cb commit];
         [cb waitUntilCompleted];
         return new_violation("after endEncoding") && failed_with(cb, "after endEncoding");
       }},
      {"encode_after_commit",
       [](Env& e) {
         id<MTLCommandBuffer> cb = [e.queue commandBuffer];
         [cb commit];
         id<MTLComputeCommandEncoder> enc = [cb computeCommandEncoder];
         [cb waitUntilCompleted];
         return expect(enc == nil, "no encoder from a committed command buffer") &&
                new_violation("computeCommandEncoder on a committed command buffer");
       }},
      {"two_open_encoders",
       [](Env& e) {
         id<MTLCommandBuffer> cb = [e.queue commandBuffer];
         id<MTLComputeCommandEncoder> a = [cb computeCommandEncoder];
         id<MTLComputeCommandEncoder> b = [cb computeCommandEncoder];
         [a endEncoding];
         [cb commit];
         [cb waitUntilCompleted];
         return expect(b == nil, "no second encoder") && new_violation("while another encoder is open") &&
                failed_with(cb, "another encoder is open");
       }},
      {"encoder_released_open",
       [](Env& e) {
         id<MTLCommandBuffer> cb = [[e.queue commandBuffer] retain];
         @autoreleasepool {
           [cb computeCommandEncoder];  // autoreleased here without endEncoding
         }
         [cb commit];
         [cb waitUntilCompleted];
         const bool ok = new_violation("released without endEncoding") && failed_with(cb, "without endEncoding");
         [cb release];
         return ok;
       }},
      {"wait_before_commit",
       [](Env& e) {
         id<MTLCommandBuffer> cb = [e.queue commandBuffer];
         [cb waitUntilCompleted];  // on Apple: never returns
         return new_violation("waitUntilCompleted before commit");
       }},
      {"commit_twice",
       [](Env& e) {
         id<MTLCommandBuffer> cb = [e.queue commandBuffer];
         [cb commit];
         [cb commit];
         [cb waitUntilCompleted];
         return new_violation("commit called twice");
       }},
      {"kernel_failure_reported",
       [](Env& e) {
         // A dispatch the emulator rejects (buffer(1) unbound): the command buffer fails, with
         // the emulator's message as its error.
         id<MTLCommandBuffer> cb = commit_swiglu(e, false);
         [cb waitUntilCompleted];
         return failed_with(cb, "swiglu_f32");
       }},
      {"results_only_after_wait",
       [](Env& e) {
         // commit alone runs nothing: reading before waitUntilCompleted sees the old bytes.
         float* x = static_cast<float*>([e.buf contents]);
         for (int i = 0; i < 128; ++i) x[i] = 1.0f;
         id<MTLCommandBuffer> cb = commit_swiglu(e);
         const bool before = x[0] == 1.0f && [cb status] == MTLCommandBufferStatusCommitted;
         [cb waitUntilCompleted];
         return expect(before, "nothing run before the wait") && expect(x[0] != 1.0f, "the result after the wait");
       }},
      {"leak",
       [](Env& e) {
         id<MTLBuffer> lost = [e.device newBufferWithLength:128 options:MTLResourceStorageModeShared];
         return expect(lost != nil, "a buffer");  // never released, on purpose
       }},
  };
  return m;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2 || cases().count(argv[1]) == 0) {
    std::fprintf(stderr, "usage: shim_cases CASE; cases:");
    for (const auto& kv : cases()) std::fprintf(stderr, " %s", kv.first.c_str());
    std::fprintf(stderr, "\n");
    return 2;
  }
  bool ok = false;
  @autoreleasepool {
    Env e;
    g_violations_at_start = mtlshim_violation_count();
    ok = e.open() && cases().at(argv[1])(e);
  }
  const int64_t live = mtlshim_live_objects();
  std::printf("live_objects=%lld violations=%lld\n", static_cast<long long>(live),
              static_cast<long long>(mtlshim_violation_count() - g_violations_at_start));
  std::fflush(stdout);  // LeakSanitizer ends the process with _exit after main returns
  return ok ? 0 : 1;
}
