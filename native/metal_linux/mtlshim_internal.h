// Shared by the two halves of the Linux Metal runtime (mtlshim.h): mtlshim_objects.mm (settings,
// bookkeeping, the emulator, device / buffer / library / function / pipeline) and
// mtlshim_commands.mm (queue, command buffer, compute encoder). Objective-C++, manual
// retain/release, GNUstep Foundation; the Metal protocols come from <Metal/Metal.h> (generated
// from Apple's metal-cpp headers), so every method here is type-checked against Apple's API.
#pragma once

#import <Foundation/Foundation.h>
#import <Metal/Metal.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "metal_emu/emu_abi.h"

namespace mtlshim {

struct Settings {
  size_t page = 16384;                      // Apple Silicon's page
  uint64_t max_buffer = uint64_t{8} << 30;  // maxBufferLength
  NSUInteger max_threads = 1024;            // maxTotalThreadsPerThreadgroup
  int workers = 0;                          // emulator threads (0: all cores)
  std::string fault;                        // simulated system failure (mtlshim.h)
};

const Settings& settings();
bool fault(const char* name);  // settings().fault == name
bool trace();                  // METALLIC_MTLSHIM_TRACE=1

// A broken precondition: counted, logged (mtlshim_violation) and written to stderr.
void violation(const std::string& what);
NSError* make_error(NSString* domain, NSInteger code, const std::string& what);  // autoreleased

// The Metal emulator (libmetallic_shaders_emu.so next to this library, else $METALLIC_EMU_LIB).
// Loaded once; false with *why filled when it cannot be.
bool emulator_ready(std::string* why);
bool emulator_has_kernel(const std::string& name);
int emulator_dispatch(const emu_dispatch_t& d, std::string* err);

void note_dispatch();
void note_commit();

}  // namespace mtlshim

// Base of every Metal object here: counts the live ones (mtlshim_live_objects).
// GNUstep's gcc runtime has the fragile ABI: instance variables are declared in @interface, and
// C++ state lives in a plain struct behind one pointer (no C++ ivars: no .cxx_construct there).
@interface MTLShimObject : NSObject
@end

@interface MTLShimBuffer : MTLShimObject <MTLBuffer> {
  void* bytes_;
  NSUInteger length_;
  bool owned_;
  bool private_;  // MTLStorageModePrivate: no CPU address
  void (^deallocator_)(void*, NSUInteger);
}
@end

@interface MTLShimPipeline : MTLShimObject <MTLComputePipelineState> {
  std::string* kernel_;
}
- (const std::string&)kernel;
@end

namespace mtlshim {
struct QueueState;
}

@interface MTLShimQueue : MTLShimObject <MTLCommandQueue> {
  id<MTLDevice> device_;  // not retained: a queue does not keep its device alive here
  mtlshim::QueueState* st_;
}
- (instancetype)initWithDevice:(id<MTLDevice>)device;
@end
