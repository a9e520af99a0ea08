// The emulated-Metal device (emu_device.h): host memory and encode(), i.e. one emu_dispatch per
// Launch of the shared Metal plan (native/metal_plan/plan.cpp), which does all the planning and
// validation.
#include "metal_emu/emu_device.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

#include "core/error.h"
#include "core/module_path.h"

namespace metallic {

namespace {

constexpr const char* kWhere = "metal-emulated";
constexpr const char* kLibName = "libmetallic_shaders_emu.so";
constexpr const char* kLibEnv = "METALLIC_EMU_LIB";
constexpr size_t kAlign = 64;

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
  const std::string dir = module_dir();
  const char* env = std::getenv(kLibEnv);
  std::string candidates[2];
  int n = 0;
  candidates[n++] = dir + "/" + kLibName;
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

}  // namespace

MetalEmuDevice::MetalEmuDevice(int threads, const DeviceLimits& limits)
    : MetalPlanDevice(kWhere, limits), api_(&load_api()), workers_(threads) {}

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

// Dispatches run to completion inside emu_dispatch, so there is nothing in flight to wait for
// (the Metal device will commit and wait on its command buffer here).
void MetalEmuDevice::synchronize() {}

void MetalEmuDevice::encode(const Launch& l) {
  emu_dispatch_t d{};
  d.kernel = l.kernel;
  for (int i = 0; i < 3; ++i) {
    d.groups[i] = l.groups[i];
    d.threads[i] = l.threads[i];
  }
  static_assert(kMaxLaunchBindings <= EMU_MAX_BUFFERS, "the emulator binds fewer buffers than a Launch");
  for (int i = 0; i < l.n_bindings; ++i) {
    const Binding& b = l.bind[i];
    switch (b.kind) {
      case Binding::Kind::kUnbound: break;  // the emulator reports it if the kernel declares it
      case Binding::Kind::kBuffer:
        d.buffers[i] = emu_buffer{static_cast<char*>(b.buf.host) + b.offset, b.extent};
        break;
      case Binding::Kind::kBytes: d.buffers[i] = emu_buffer{const_cast<void*>(b.bytes), b.nbytes}; break;
    }
  }
  d.workers = workers_;
  char err[1024] = {0};
  const int rc = api_->dispatch(&d, err, sizeof(err));
  if (rc != EMU_OK)
    fail(ErrorCode::kKernelFailure, "metal-emulated.run",
         std::string(err[0] != '\0' ? err : "emulator dispatch failed") + " (code " + std::to_string(rc) + ")");
}

std::unique_ptr<Device> make_metal_emu_device(int threads, const DeviceLimits& limits) {
  return std::make_unique<MetalEmuDevice>(threads, limits);
}

}  // namespace metallic
