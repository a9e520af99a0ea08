// The Linux Metal runtime (mtlshim.h), first half: settings, bookkeeping, the emulator, and the
// device, buffer, library, function and pipeline objects. Each precondition below is one Apple
// documents for the call; a violation returns nil (and an NSError where the call takes one) and
// is counted, never an abort, so the device code above sees it as Metal reports failures.
#import "mtlshim_internal.h"

#include <dlfcn.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <set>
#include <vector>

#include "mach/vm_page_size.h"
#include "metal_linux/mtlshim.h"

// Apple's global (Mach); here it follows the page-size setting (see mach/vm_page_size.h).
extern "C" __attribute__((visibility("default"))) vm_size_t vm_page_size = 16384;

namespace mtlshim {
namespace {

// The storage-mode bits of MTLResourceOptions (bits 4..7, Apple's MTLResourceStorageModeShift).
bool is_private(MTLResourceOptions options) {
  return (options & (NSUInteger{0xF} << 4)) == MTLResourceStorageModePrivate;
}

std::atomic<int64_t> g_live{0}, g_violations{0}, g_dispatches{0}, g_commits{0};
constexpr int64_t kKeptViolations = 64;

std::mutex& log_mutex() {
  static std::mutex mu;
  return mu;
}
std::vector<std::string>& log() {
  static std::vector<std::string> v;
  return v;
}

Settings& mutable_settings() {
  static Settings s;
  return s;
}

uint64_t env_u64(const char* name, uint64_t fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  const unsigned long long x = std::strtoull(v, &end, 10);
  if (end == v || *end != '\0' || x == 0) {
    violation(std::string(name) + ": expected a positive integer, got '" + v + "' (default kept)");
    return fallback;
  }
  return x;
}

void load_settings() {
  Settings s;
  s.page = static_cast<size_t>(env_u64("METALLIC_MTLSHIM_PAGE_SIZE", s.page));
  if ((s.page & (s.page - 1)) != 0 || s.page < 4096) {
    violation("METALLIC_MTLSHIM_PAGE_SIZE: expected a power of two >= 4096, got " + std::to_string(s.page));
    s.page = 16384;
  }
  s.max_buffer = env_u64("METALLIC_MTLSHIM_MAX_BUFFER", s.max_buffer);
  s.max_threads = static_cast<NSUInteger>(env_u64("METALLIC_MTLSHIM_MAX_THREADS", s.max_threads));
  const char* w = std::getenv("METALLIC_MTLSHIM_WORKERS");
  s.workers = w != nullptr ? std::atoi(w) : 0;
  const char* f = std::getenv("METALLIC_MTLSHIM_FAULT");
  s.fault = f != nullptr ? f : "";
  mutable_settings() = s;
  vm_page_size = static_cast<vm_size_t>(s.page);
}

struct Emulator {
  std::once_flag once;
  std::string error;  // empty: loaded
  int (*dispatch)(const emu_dispatch_t*, char*, uint64_t) = nullptr;
  std::set<std::string> kernels;
};

Emulator& emulator() {
  static Emulator e;
  std::call_once(e.once, [&] {
    std::vector<std::string> candidates;
    Dl_info info{};
    if (dladdr(reinterpret_cast<void*>(&mtlshim_live_objects), &info) != 0 && info.dli_fname != nullptr) {
      std::string dir = info.dli_fname;
      const size_t slash = dir.rfind('/');
      dir = slash == std::string::npos ? "." : dir.substr(0, slash);
      candidates.push_back(dir + "/libmetallic_shaders_emu.so");
    }
    if (const char* env = std::getenv("METALLIC_EMU_LIB"); env != nullptr && *env != '\0') candidates.push_back(env);
    void* h = nullptr;
    std::string tried;
    for (const std::string& c : candidates) {
      h = dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (h != nullptr) break;
      const char* why = dlerror();
      tried += (tried.empty() ? "" : "; ") + c + " (" + (why != nullptr ? why : "not loadable") + ")";
    }
    if (h == nullptr) {
      e.error = "cannot load the Metal emulator libmetallic_shaders_emu.so: tried " + tried;
      return;
    }
    auto version = reinterpret_cast<int (*)()>(dlsym(h, "emu_abi_version"));
    auto count = reinterpret_cast<int (*)()>(dlsym(h, "emu_kernel_count"));
    auto name = reinterpret_cast<const char* (*)(int)>(dlsym(h, "emu_kernel_name"));
    e.dispatch = reinterpret_cast<int (*)(const emu_dispatch_t*, char*, uint64_t)>(dlsym(h, "emu_dispatch"));
    if (version == nullptr || count == nullptr || name == nullptr || e.dispatch == nullptr ||
        version() != EMU_ABI_VERSION) {
      e.error =
          "libmetallic_shaders_emu.so: missing symbols or ABI version expected " + std::to_string(EMU_ABI_VERSION);
      e.dispatch = nullptr;
      return;
    }
    for (int i = 0, n = count(); i < n; ++i) e.kernels.insert(name(i));
  });
  return e;
}

}  // namespace

const Settings& settings() { return mutable_settings(); }
bool trace() {
  static const bool on = [] {
    const char* v = std::getenv("METALLIC_MTLSHIM_TRACE");
    return v != nullptr && *v == '1';
  }();
  return on;
}
bool fault(const char* name) { return settings().fault == name; }

void violation(const std::string& what) {
  const int64_t n = g_violations.fetch_add(1) + 1;
  std::fprintf(stderr, "[mtlshim] precondition violated (%lld): %s\n", static_cast<long long>(n), what.c_str());
  std::lock_guard<std::mutex> lock(log_mutex());
  if (static_cast<int64_t>(log().size()) < kKeptViolations) log().push_back(what);
}

NSError* make_error(NSString* domain, NSInteger code, const std::string& what) {
  NSDictionary* info = [NSDictionary dictionaryWithObject:[NSString stringWithUTF8String:what.c_str()]
                                                   forKey:NSLocalizedDescriptionKey];
  return [NSError errorWithDomain:domain code:code userInfo:info];
}

bool emulator_ready(std::string* why) {
  Emulator& e = emulator();
  if (e.dispatch == nullptr && why != nullptr) *why = e.error;
  return e.dispatch != nullptr;
}

bool emulator_has_kernel(const std::string& name) {
  Emulator& e = emulator();
  return e.kernels.count(name) != 0;
}

int emulator_dispatch(const emu_dispatch_t& d, std::string* err) {
  Emulator& e = emulator();
  char buf[1024] = {0};
  const int rc = e.dispatch(&d, buf, sizeof(buf));
  if (rc != EMU_OK && err != nullptr) *err = buf[0] != '\0' ? buf : "emulator dispatch failed";
  return rc;
}

void note_dispatch() { g_dispatches.fetch_add(1); }
void note_commit() { g_commits.fetch_add(1); }

}  // namespace mtlshim

using mtlshim::settings;
using mtlshim::violation;

extern "C" {
__attribute__((visibility("default"))) int64_t mtlshim_live_objects(void) { return mtlshim::g_live.load(); }
__attribute__((visibility("default"))) int64_t mtlshim_violation_count(void) { return mtlshim::g_violations.load(); }
__attribute__((visibility("default"))) const char* mtlshim_violation(int64_t i) {
  std::lock_guard<std::mutex> lock(mtlshim::log_mutex());
  if (i < 0 || i >= static_cast<int64_t>(mtlshim::log().size())) return nullptr;
  return mtlshim::log()[static_cast<size_t>(i)].c_str();
}
__attribute__((visibility("default"))) int64_t mtlshim_dispatch_count(void) { return mtlshim::g_dispatches.load(); }
__attribute__((visibility("default"))) int64_t mtlshim_commit_count(void) { return mtlshim::g_commits.load(); }
}

// METALLIC_MTLSHIM_TRACE=1 prints each object's birth and death (to find an unbalanced one).
@implementation MTLShimObject
- (instancetype)init {
  if ((self = [super init])) {
    mtlshim::g_live.fetch_add(1);
    if (mtlshim::trace())
      std::fprintf(stderr, "[mtlshim] +%s %p\n", [NSStringFromClass([self class]) UTF8String], (void*)self);
  }
  return self;
}
- (void)dealloc {
  mtlshim::g_live.fetch_sub(1);
  if (mtlshim::trace())
    std::fprintf(stderr, "[mtlshim] -%s %p\n", [NSStringFromClass([self class]) UTF8String], (void*)self);
  [super dealloc];
}
@end

// ---- buffers --------------------------------------------------------------------------------

@implementation MTLShimBuffer

- (instancetype)initWithLength:(NSUInteger)length options:(MTLResourceOptions)options {
  if ((self = [super init])) {
    const size_t page = settings().page;
    bytes_ = std::aligned_alloc(page, (length + page - 1) / page * page);
    if (bytes_ == nullptr) {
      [self release];
      return nil;
    }
    std::memset(bytes_, 0, length);  // Apple: a new buffer is zero-filled
    length_ = length;
    owned_ = true;
    private_ = mtlshim::is_private(options);
  }
  return self;
}

- (instancetype)initWithBytes:(void*)bytes length:(NSUInteger)length deallocator:(void (^)(void*, NSUInteger))d {
  if ((self = [super init])) {
    bytes_ = bytes;
    length_ = length;
    owned_ = false;
    private_ = false;
    deallocator_ = nil;
    if (d != nil) deallocator_ = Block_copy(d);
  }
  return self;
}

- (void)dealloc {
  if (owned_) std::free(bytes_);
  if (deallocator_ != nil) {
    deallocator_(bytes_, length_);
    Block_release(deallocator_);
  }
  [super dealloc];
}

- (void*)contents {
  return private_ ? nullptr : bytes_;
}
- (NSUInteger)length {
  return length_;
}
@end

// ---- library, function, pipeline ------------------------------------------------------------

@interface MTLShimFunction : MTLShimObject <MTLFunction> {
  std::string* name_;
}
- (instancetype)initWithName:(const std::string&)name;
- (const std::string&)kernel;
@end

@implementation MTLShimFunction
- (instancetype)initWithName:(const std::string&)name {
  if ((self = [super init])) name_ = new std::string(name);
  return self;
}
- (void)dealloc {
  delete name_;
  [super dealloc];
}
- (NSString*)name {
  return [NSString stringWithUTF8String:name_->c_str()];
}
- (const std::string&)kernel {
  return *name_;
}
@end

// The library of a source string: the functions it can hand out are the kernels of the emulator
// library (compiled from the same shaders/*.metal) whose host name is a string literal of the
// source, so a kernel missing from the source the device passes is not found, as on Apple.
@interface MTLShimLibrary : MTLShimObject <MTLLibrary> {
  std::set<std::string>* names_;
}
- (instancetype)initWithNames:(std::set<std::string>)names;
@end

@implementation MTLShimLibrary
- (instancetype)initWithNames:(std::set<std::string>)names {
  if ((self = [super init])) names_ = new std::set<std::string>(std::move(names));
  return self;
}
- (void)dealloc {
  delete names_;
  [super dealloc];
}
- (id<MTLFunction>)newFunctionWithName:(NSString*)name {
  if (name == nil) {
    violation("newFunctionWithName: nil name");
    return nil;
  }
  const std::string n = [name UTF8String];
  if (names_->count(n) == 0 || !mtlshim::emulator_has_kernel(n)) return nil;
  return [[MTLShimFunction alloc] initWithName:n];
}
@end

@implementation MTLShimPipeline
- (instancetype)initWithKernel:(const std::string&)kernel {
  if ((self = [super init])) kernel_ = new std::string(kernel);
  return self;
}
- (void)dealloc {
  delete kernel_;
  [super dealloc];
}
- (NSUInteger)maxTotalThreadsPerThreadgroup {
  return settings().max_threads;
}
- (NSUInteger)threadExecutionWidth {
  return 32;
}
- (const std::string&)kernel {
  return *kernel_;
}
@end

// ---- the device -----------------------------------------------------------------------------

namespace {

// Every identifier-like string literal of an MSL source (the [[host_name]]s among them).
std::set<std::string> string_literals(const char* src) {
  std::set<std::string> out;
  for (const char* p = src; *p != '\0'; ++p) {
    if (*p != '"') continue;
    const char* q = p + 1;
    while (*q != '\0' && *q != '"' && *q != '\n') ++q;
    if (*q != '"') {
      p = q - 1 > p ? q - 1 : p;
      continue;
    }
    out.emplace(p + 1, static_cast<size_t>(q - p - 1));
    p = q;
  }
  return out;
}

}  // namespace

@interface MTLShimDevice : MTLShimObject <MTLDevice>
@end

@implementation MTLShimDevice
- (NSString*)name {
  return @"metallic Linux Metal runtime (shaders run by the Metal emulator)";
}
- (NSUInteger)maxBufferLength {
  return static_cast<NSUInteger>(settings().max_buffer);
}
- (id<MTLCommandQueue>)newCommandQueue {
  return [[MTLShimQueue alloc] initWithDevice:self];
}

- (id<MTLBuffer>)newBufferWithLength:(NSUInteger)length options:(MTLResourceOptions)options {
  if (length == 0 || length > [self maxBufferLength]) {
    violation("newBufferWithLength: length " + std::to_string(length) + " outside 1.." +
              std::to_string([self maxBufferLength]) + " (maxBufferLength)");
    return nil;
  }
  if (mtlshim::fault("alloc")) return nil;
  return [[MTLShimBuffer alloc] initWithLength:length options:options];
}

- (id<MTLBuffer>)newBufferWithBytesNoCopy:(void*)pointer
                                   length:(NSUInteger)length
                                  options:(MTLResourceOptions)options
                              deallocator:(void (^)(void* pointer, NSUInteger length))deallocator {
  const size_t page = settings().page;
  std::string bad;
  if (pointer == nullptr) {
    bad = "pointer is NULL";
  } else if (reinterpret_cast<uintptr_t>(pointer) % page != 0) {
    bad = "pointer " + std::to_string(reinterpret_cast<uintptr_t>(pointer)) + " is not page-aligned (page " +
          std::to_string(page) + ")";
  } else if (length == 0 || length % page != 0) {
    bad = "length " + std::to_string(length) + " is not a positive multiple of the page size " + std::to_string(page);
  } else if (length > [self maxBufferLength]) {
    bad = "length " + std::to_string(length) + " exceeds maxBufferLength " + std::to_string([self maxBufferLength]);
  } else if (mtlshim::is_private(options)) {
    bad = "private storage cannot wrap CPU memory";
  }
  if (!bad.empty()) {
    violation("newBufferWithBytesNoCopy: " + bad);
    return nil;
  }
  if (mtlshim::fault("alloc")) return nil;
  return [[MTLShimBuffer alloc] initWithBytes:pointer length:length deallocator:deallocator];
}

- (id<MTLLibrary>)newLibraryWithSource:(NSString*)source options:(MTLCompileOptions*)options error:(NSError**)error {
  (void)options;
  std::string why;
  if (source == nil || [source length] == 0) {
    why = "empty source";
  } else if (mtlshim::fault("library")) {
    why = "program_source: error: simulated compiler failure (METALLIC_MTLSHIM_FAULT=library)";
  } else {
    mtlshim::emulator_ready(&why);  // fills `why` when the emulator cannot be loaded
  }
  if (!why.empty()) {
    if (error != nullptr) *error = mtlshim::make_error(@"MTLLibraryErrorDomain", 3, why);
    return nil;
  }
  return [[MTLShimLibrary alloc] initWithNames:string_literals([source UTF8String])];
}

- (id<MTLLibrary>)newLibraryWithURL:(NSURL*)url error:(NSError**)error {
  if (error != nullptr)
    *error = mtlshim::make_error(@"MTLLibraryErrorDomain", 1,
                                 std::string("the Linux Metal runtime loads no .metallib (") +
                                     (url != nil ? [[url path] UTF8String] : "nil") + ")");
  return nil;
}

- (id<MTLComputePipelineState>)newComputePipelineStateWithFunction:(id<MTLFunction>)function error:(NSError**)error {
  std::string why;
  if (function == nil || ![(id)function isKindOfClass:[MTLShimFunction class]]) {
    violation("newComputePipelineStateWithFunction: not a function of this device");
    why = "invalid function";
  } else if (mtlshim::fault("pipeline")) {
    why = "simulated pipeline failure (METALLIC_MTLSHIM_FAULT=pipeline)";
  }
  if (!why.empty()) {
    if (error != nullptr) *error = mtlshim::make_error(@"MTLLibraryErrorDomain", 2, why);
    return nil;
  }
  return [[MTLShimPipeline alloc] initWithKernel:[(MTLShimFunction*)function kernel]];
}
@end

// GNUstep allocates some class state the first time a class is used and never frees it (24 bytes
// for NSError, measured). Doing that first use here, under one named frame, lets the leak check
// suppress exactly this function (tests/metal_linux/lsan.supp) and nothing the runtime does later.
extern "C" __attribute__((noinline, visibility("default"))) void mtlshim_foundation_warm_up(void) {
  @autoreleasepool {
    [[mtlshim::make_error(@"MTLShimWarmUp", 0, "warm-up") localizedDescription] UTF8String];
    [[NSURL fileURLWithPath:@"/"] path];
  }
}

extern "C" __attribute__((visibility("default"))) id<MTLDevice> MTLCreateSystemDefaultDevice(void) {
  static std::once_flag warm;
  std::call_once(warm, mtlshim_foundation_warm_up);
  mtlshim::load_settings();
  if (mtlshim::fault("no-device")) return nil;
  return [[MTLShimDevice alloc] init];
}
