// The Linux Metal runtime (mtlshim.h), second half: command queue, command buffer and compute
// command encoder.
//
// Execution model (a legal Metal schedule, chosen to expose missing waits): commit enqueues the
// command buffer on its queue; nothing runs until a command buffer of that queue is waited on (or
// the queue goes away), then every committed buffer up to it runs in commit order, each dispatch
// through the Metal emulator. So a device that reads results before waitUntilCompleted reads
// stale memory, and its tests fail.
//
// Preconditions enforced (Apple's documented rules; each violation is counted and logged, and
// the command buffer it belongs to ends with MTLCommandBufferStatusError and an NSError naming it):
//   - one encoder open at a time; encoding only between computeCommandEncoder and endEncoding;
//     endEncoding before commit; an encoder released without endEncoding;
//   - nothing encoded into, nor a new encoder asked of, a committed command buffer; commit once;
//     waitUntilCompleted only after commit (on Apple it would never return);
//   - setBuffer: offset inside the buffer, index < 31; setBytes: 1..4096 bytes, index < 31;
//   - dispatch: a pipeline set, threadgroups and threads per threadgroup non-zero, threads per
//     threadgroup within the pipeline's maxTotalThreadsPerThreadgroup.
// Command buffers retain the buffers and pipelines they use until they complete, as Metal does.
#import "mtlshim_internal.h"

#include <array>
#include <cstdio>
#include <deque>
#include <vector>

using mtlshim::violation;

namespace {

constexpr NSUInteger kMaxBindings = 31;  // Metal's buffer argument table
constexpr NSUInteger kMaxSetBytes = 4096;

struct Slot {
  id<MTLBuffer> buffer = nil;  // retained by the command holding the slot
  NSUInteger offset = 0;
  std::vector<unsigned char> bytes;  // setBytes: copied at encode time
  bool bound = false;
};

struct Command {
  std::string kernel;
  MTLSize groups{};
  MTLSize threads{};
  std::array<Slot, kMaxBindings> slots;
};

struct CommandBufferState {
  std::vector<Command> commands;
  std::string failure;  // first violation while recording
};

}  // namespace

@interface MTLShimCommandBuffer : MTLShimObject <MTLCommandBuffer> {
  MTLShimQueue* queue_;  // retained (Metal: commandQueue is a strong reference)
  CommandBufferState* st_;
  NSError* error_;  // retained
  MTLCommandBufferStatus status_;
  bool encoder_open_;
}
- (instancetype)initWithQueue:(MTLShimQueue*)queue;
- (bool)committed;
- (void)fail:(const std::string&)what;  // a violation while recording
- (void)encoderEnded;
- (void)record:(Command&&)command;
- (void)execute;  // run the recorded commands (called by the queue, in commit order)
@end

@interface MTLShimQueue ()
- (void)enqueue:(MTLShimCommandBuffer*)buffer;
- (void)runThrough:(MTLShimCommandBuffer*)buffer;
@end

// ---- compute command encoder ----------------------------------------------------------------

@interface MTLShimEncoder : MTLShimObject <MTLComputeCommandEncoder> {
  MTLShimCommandBuffer* cb_;               // retained
  MTLShimPipeline* pipeline_;              // retained
  std::array<Slot, kMaxBindings>* slots_;  // buffers retained
  bool ended_;
}
- (instancetype)initWithCommandBuffer:(MTLShimCommandBuffer*)cb;
@end

@implementation MTLShimEncoder

- (instancetype)initWithCommandBuffer:(MTLShimCommandBuffer*)cb {
  if ((self = [super init])) {
    cb_ = [cb retain];
    slots_ = new std::array<Slot, kMaxBindings>();
  }
  return self;
}

- (void)dealloc {
  if (!ended_) {
    violation("compute command encoder released without endEncoding");
    [cb_ fail:"an encoder was released without endEncoding"];
    [cb_ encoderEnded];
  }
  for (Slot& s : *slots_) [s.buffer release];
  delete slots_;
  [pipeline_ release];
  [cb_ release];
  [super dealloc];
}

// False (and the violation reported) when nothing may be encoded now.
- (bool)usable:(const char*)call {
  std::string why;
  if (ended_)
    why = std::string(call) + " after endEncoding";
  else if ([cb_ committed])
    why = std::string(call) + " on a committed command buffer";
  if (why.empty()) return true;
  violation(why);
  [cb_ fail:why];
  return false;
}

- (bool)slotIndex:(NSUInteger)index call:(const char*)call {
  if (index < kMaxBindings) return true;
  const std::string why = std::string(call) + ": index " + std::to_string(index) + " outside 0..30";
  violation(why);
  [cb_ fail:why];
  return false;
}

- (void)setComputePipelineState:(id<MTLComputePipelineState>)state {
  if (![self usable:"setComputePipelineState:"]) return;
  if (state == nil || ![(id)state isKindOfClass:[MTLShimPipeline class]]) {
    violation("setComputePipelineState: not a pipeline of this device");
    [cb_ fail:"setComputePipelineState: invalid pipeline"];
    return;
  }
  [state retain];
  [pipeline_ release];
  pipeline_ = (MTLShimPipeline*)state;
}

- (void)setBuffer:(id<MTLBuffer>)buffer offset:(NSUInteger)offset atIndex:(NSUInteger)index {
  if (![self usable:"setBuffer:offset:atIndex:"] || ![self slotIndex:index call:"setBuffer:offset:atIndex:"]) return;
  if (buffer != nil && offset >= [buffer length]) {
    const std::string why = "setBuffer:offset:atIndex: index " + std::to_string(index) + ": offset " +
                            std::to_string(offset) + " outside the buffer's " + std::to_string([buffer length]) +
                            " bytes";
    violation(why);
    [cb_ fail:why];
    return;
  }
  Slot& s = (*slots_)[index];
  [buffer retain];
  [s.buffer release];
  s = Slot{buffer, offset, {}, buffer != nil};
}

- (void)setBytes:(const void*)bytes length:(NSUInteger)length atIndex:(NSUInteger)index {
  if (![self usable:"setBytes:length:atIndex:"] || ![self slotIndex:index call:"setBytes:length:atIndex:"]) return;
  if (bytes == nullptr || length == 0 || length > kMaxSetBytes) {
    const std::string why = "setBytes:length:atIndex: index " + std::to_string(index) +
                            ": expected 1..4096 bytes, got " + std::to_string(length) +
                            (bytes == nullptr ? " from NULL" : "");
    violation(why);
    [cb_ fail:why];
    return;
  }
  Slot& s = (*slots_)[index];
  [s.buffer release];
  const auto* p = static_cast<const unsigned char*>(bytes);
  s = Slot{nil, 0, std::vector<unsigned char>(p, p + length), true};
}

- (void)dispatchThreadgroups:(MTLSize)groups threadsPerThreadgroup:(MTLSize)threads {
  if (![self usable:"dispatchThreadgroups:threadsPerThreadgroup:"]) return;
  const NSUInteger lanes = threads.width * threads.height * threads.depth;
  std::string why;
  if (pipeline_ == nil) {
    why = "dispatch without a compute pipeline state";
  } else if (groups.width == 0 || groups.height == 0 || groups.depth == 0 || lanes == 0) {
    why = "dispatch of " + [pipeline_ kernel] + ": empty grid or threadgroup";
  } else if (lanes > [pipeline_ maxTotalThreadsPerThreadgroup]) {
    why = "dispatch of " + [pipeline_ kernel] + ": " + std::to_string(lanes) +
          " threads per threadgroup exceed maxTotalThreadsPerThreadgroup " +
          std::to_string([pipeline_ maxTotalThreadsPerThreadgroup]);
  }
  if (!why.empty()) {
    violation(why);
    [cb_ fail:why];
    return;
  }
  Command c;
  c.kernel = [pipeline_ kernel];
  c.groups = groups;
  c.threads = threads;
  c.slots = *slots_;
  for (Slot& s : c.slots) [s.buffer retain];  // the command buffer keeps them until it completes
  [cb_ record:std::move(c)];
}

- (void)endEncoding {
  if (ended_) {
    violation("endEncoding called twice");
    [cb_ fail:"endEncoding called twice"];
    return;
  }
  ended_ = true;
  [cb_ encoderEnded];
}
@end

// ---- command buffer -------------------------------------------------------------------------

@implementation MTLShimCommandBuffer

- (instancetype)initWithQueue:(MTLShimQueue*)queue {
  if ((self = [super init])) {
    queue_ = [queue retain];
    st_ = new CommandBufferState();
    status_ = MTLCommandBufferStatusNotEnqueued;
  }
  return self;
}

- (void)releaseResources {
  for (Command& c : st_->commands)
    for (Slot& s : c.slots) [s.buffer release];
  st_->commands.clear();
}

- (void)dealloc {
  [self releaseResources];
  delete st_;
  [error_ release];
  [queue_ release];
  [super dealloc];
}

- (bool)committed {
  return status_ != MTLCommandBufferStatusNotEnqueued;
}
- (void)fail:(const std::string&)what {
  if (st_->failure.empty()) st_->failure = what;
}
- (void)encoderEnded {
  encoder_open_ = false;
}
- (void)record:(Command&&)command {
  st_->commands.push_back(std::move(command));
}

- (id<MTLComputeCommandEncoder>)computeCommandEncoder {
  std::string why;
  if ([self committed])
    why = "computeCommandEncoder on a committed command buffer";
  else if (encoder_open_)
    why = "computeCommandEncoder while another encoder is open (endEncoding not called)";
  if (!why.empty()) {
    violation(why);
    [self fail:why];
    return nil;
  }
  encoder_open_ = true;
  return [[[MTLShimEncoder alloc] initWithCommandBuffer:self] autorelease];
}

- (void)commit {
  if (mtlshim::trace()) std::fprintf(stderr, "[mtlshim] commit %p\n", (void*)self);
  if ([self committed]) {
    violation("commit called twice on a command buffer");
    return;
  }
  if (encoder_open_) {
    violation("commit with an encoder still open (endEncoding not called)");
    [self fail:"committed with an encoder still open"];
  }
  status_ = MTLCommandBufferStatusCommitted;
  [queue_ enqueue:self];
}

- (void)execute {
  std::string err;
  if (!st_->failure.empty()) {
    err = "[mtlshim] " + st_->failure;
  } else if (mtlshim::fault("commit")) {
    err = "Caused GPU Address Fault Error (simulated: METALLIC_MTLSHIM_FAULT=commit)";
  } else {
    for (const Command& c : st_->commands) {
      emu_dispatch_t d{};
      d.kernel = c.kernel.c_str();
      const NSUInteger g[3] = {c.groups.width, c.groups.height, c.groups.depth};
      const NSUInteger t[3] = {c.threads.width, c.threads.height, c.threads.depth};
      for (int i = 0; i < 3; ++i) {
        d.groups[i] = static_cast<uint32_t>(g[i]);
        d.threads[i] = static_cast<uint32_t>(t[i]);
      }
      for (NSUInteger i = 0; i < kMaxBindings; ++i) {
        const Slot& s = c.slots[i];
        if (!s.bound) continue;
        if (s.buffer != nil) {
          char* base = static_cast<char*>([s.buffer contents]);
          if (base == nullptr) {
            err = "kernel " + c.kernel + ": buffer(" + std::to_string(i) + ") has no CPU-visible storage";
            break;
          }
          d.buffers[i] = emu_buffer{base + s.offset, [s.buffer length] - s.offset};
        } else {
          d.buffers[i] = emu_buffer{const_cast<unsigned char*>(s.bytes.data()), s.bytes.size()};
        }
      }
      if (!err.empty()) break;
      d.workers = mtlshim::settings().workers;
      mtlshim::note_dispatch();
      if (mtlshim::emulator_dispatch(d, &err) != EMU_OK) break;
      err.clear();
    }
  }
  if (err.empty()) {
    status_ = MTLCommandBufferStatusCompleted;
  } else {
    status_ = MTLCommandBufferStatusError;
    error_ = [mtlshim::make_error(@"MTLCommandBufferErrorDomain", 1, err) retain];  // MTLCommandBufferErrorInternal
  }
  mtlshim::note_commit();
  [self releaseResources];
}

- (void)waitUntilCompleted {
  if (mtlshim::trace()) std::fprintf(stderr, "[mtlshim] wait %p\n", (void*)self);
  if (![self committed]) {
    violation("waitUntilCompleted before commit (on Apple it never returns)");
    return;
  }
  [queue_ runThrough:self];
}

- (MTLCommandBufferStatus)status {
  return status_;
}
- (NSError*)error {
  return error_;
}
@end

// ---- command queue --------------------------------------------------------------------------

namespace mtlshim {
struct QueueState {
  std::deque<MTLShimCommandBuffer*> pending;  // committed, not yet run; retained
};
}  // namespace mtlshim

// Each pending command buffer retains its queue, so `pending` is empty by the time the queue is
// deallocated. (A buffer committed and never waited on keeps itself and its queue alive:
// mtlshim_live_objects shows it.)
@implementation MTLShimQueue

- (instancetype)initWithDevice:(id<MTLDevice>)device {
  if ((self = [super init])) {
    device_ = device;
    st_ = new mtlshim::QueueState();
  }
  return self;
}

- (void)dealloc {
  delete st_;
  [super dealloc];
}

- (id<MTLDevice>)device {
  return device_;
}

- (id<MTLCommandBuffer>)commandBuffer {
  return [[[MTLShimCommandBuffer alloc] initWithQueue:self] autorelease];
}

- (void)enqueue:(MTLShimCommandBuffer*)buffer {
  st_->pending.push_back([buffer retain]);
}

// Runs the committed buffers in order up to and including `last` (all of them for nil).
- (void)runThrough:(MTLShimCommandBuffer*)last {
  bool found = last == nil;
  for (MTLShimCommandBuffer* b : st_->pending) found = found || b == last;
  if (!found) return;  // already run
  [self retain];       // a buffer released below may hold the last other reference to this queue
  while (!st_->pending.empty()) {
    MTLShimCommandBuffer* b = st_->pending.front();
    st_->pending.pop_front();
    [b execute];
    const bool done = b == last;
    [b release];
    if (done) break;
  }
  [self release];
}
@end
