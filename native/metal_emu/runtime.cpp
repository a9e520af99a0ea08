// The emulator runtime: kernel registry, dispatch validation and the fiber scheduler.
//
// A dispatch's threadgroups are spread over worker threads; each worker runs one threadgroup at a
// time, its lanes as ucontext fibers. A lane runs until it reaches a sync point (threadgroup
// barrier or simd_* call) and then yields to the scheduler, which releases a simdgroup when all
// of its active lanes wait at the same simd_* call and the threadgroup when all lanes wait at the
// same barrier. Anything else is a bug in the kernel and is reported with the .metal lines:
// a lane that returned while others wait at a barrier, lanes at different barriers or simd_*
// calls, a simd_* call in some lanes of a simdgroup while the others wait at a barrier.
//
// Under ThreadSanitizer every lane is a TSan fiber and each sync point is a release/acquire pair,
// so a missing barrier shows up as a data race at its .metal line; fiber switches carry no
// synchronisation of their own.
#include "runtime.h"

#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "emu_sync.h"

// EMU_TSAN is set by build_emu.py for ThreadSanitizer builds, where this file itself is compiled
// WITHOUT -fsanitize=thread: the runtime's own bookkeeping (lane states shared by scheduler and
// fibers across unsynchronised fiber switches) stays invisible, and only kernel code is checked.
#if defined(EMU_TSAN_ANNOTATE)
#define EMU_TSAN 1
#endif
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EMU_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define EMU_ASAN 1
#endif

#ifdef EMU_TSAN
extern "C" {
void* __tsan_get_current_fiber(void);
void* __tsan_create_fiber(unsigned flags);
void __tsan_destroy_fiber(void* fiber);
void __tsan_switch_to_fiber(void* fiber, unsigned flags);
void __tsan_acquire(void* addr);
void __tsan_release(void* addr);
void __tsan_ignore_thread_begin(void);
void __tsan_ignore_thread_end(void);
}
#endif
#ifdef EMU_ASAN
extern "C" {
void __sanitizer_start_switch_fiber(void** fake_stack_save, const void* bottom, size_t size);
void __sanitizer_finish_switch_fiber(void* fake_stack_save, const void** bottom_old, size_t* size_old);
}
#endif

namespace emu {

namespace {

// Kernels use little stack; ASan clears the shadow of the whole stack at every swapcontext, so
// a smaller stack is also a faster one there.
constexpr size_t kStackBytes = 64 * 1024;
constexpr int kMaxLanes = 1024;

// ---------------------------------------------------------------------------------------------
// Registry

std::map<std::string, KernelInfo>& registry() {
  static std::map<std::string, KernelInfo> r;
  return r;
}

std::vector<std::string>& names() {
  static std::vector<std::string> n;
  return n;
}

// ---------------------------------------------------------------------------------------------
// Fiber stacks: mmap'd once per worker slot and kept for the life of the process.

struct StackPool {
  std::mutex mu;
  std::vector<std::vector<void*>> free_sets;  // each entry: kMaxLanes stacks (allocated lazily)
};

StackPool& stack_pool() {
  static StackPool p;
  return p;
}

// ---------------------------------------------------------------------------------------------
// One threadgroup in flight on one worker thread.

enum class LaneState : int32_t { kReady, kBarrier, kSimd, kDone, kFailed };

struct Lane {
  ucontext_t ctx;
  LaneState state = LaneState::kReady;
  std::source_location at;
  SimdOp op = SimdOp::kBarrier;
  int parity = 0;  // which slot buffer of its simdgroup the lane wrote at its current rendezvous
  LaneCtx lc;
  void* stack = nullptr;
#ifdef EMU_TSAN
  void* fiber = nullptr;
#endif
};

struct SimdGroup {
  unsigned char slots[2][kSimdWidth][kSimdSlotBytes];
  uint64_t active[2] = {0, 0};  // lanes that took part in the rendezvous of each slot buffer
  int parity = 0;
  char sync = 0;  // TSan sync object address
};

struct Group {
  const KernelInfo* info = nullptr;
  const char* kernel = nullptr;
  int n = 0;
  std::vector<Lane> lanes;
  std::vector<SimdGroup> simd;
  ucontext_t sched;
  std::string error;
  char barrier_sync = 0, start_sync = 0, end_sync = 0;  // TSan sync object addresses
  std::vector<void*> tg_declared;                       // threadgroup arrays poisoned this group
#ifdef EMU_TSAN
  void* sched_fiber = nullptr;
#endif
};

thread_local Group* t_group = nullptr;
thread_local int t_lane = -1;

std::string where(const std::source_location& at) {
  return std::string(at.file_name()) + ":" + std::to_string(at.line());
}

void switch_to_lane(Group& g, int i) {
  t_lane = i;
#ifdef EMU_TSAN
  __tsan_switch_to_fiber(g.lanes[i].fiber, 1);
#endif
#ifdef EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, g.lanes[i].stack, kStackBytes);
#endif
  swapcontext(&g.sched, &g.lanes[i].ctx);
#ifdef EMU_ASAN
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
  t_lane = -1;
}

// Called on a lane's fiber: back to the scheduler.
void yield_lane() {
  Group& g = *t_group;
  Lane& l = g.lanes[t_lane];
#ifdef EMU_TSAN
  __tsan_switch_to_fiber(g.sched_fiber, 1);
#endif
#ifdef EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, nullptr, 0);
#endif
  swapcontext(&l.ctx, &g.sched);
#ifdef EMU_ASAN
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
}

void lane_entry() {
#ifdef EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
  Group& g = *t_group;
  const int i = t_lane;
#ifdef EMU_TSAN
  __tsan_acquire(&g.start_sync);
#endif
  g.info->launch(g.lanes[i].lc);
#ifdef EMU_TSAN
  __tsan_release(&g.end_sync);
#endif
  g.lanes[t_lane].state = LaneState::kDone;
  yield_lane();
}

std::string lane_list(const Group& g, LaneState s) {
  std::string r;
  int shown = 0;
  for (int i = 0; i < g.n; ++i)
    if (g.lanes[i].state == s) {
      if (shown++ < 4) r += (r.empty() ? "" : ",") + std::to_string(i);
    }
  if (shown > 4) r += ",... (" + std::to_string(shown) + " lanes)";
  return r;
}

const char* op_name(SimdOp op) {
  switch (op) {
    case SimdOp::kBarrier: return "simdgroup_barrier";
    case SimdOp::kSum: return "simd_sum";
    case SimdOp::kMax: return "simd_max";
    case SimdOp::kMin: return "simd_min";
    case SimdOp::kBroadcast: return "simd_broadcast";
    case SimdOp::kShuffle: return "simd_shuffle";
    case SimdOp::kShuffleDown: return "simd_shuffle_down";
    case SimdOp::kShuffleXor: return "simd_shuffle_xor";
    case SimdOp::kBallot: return "simd_ballot";
    case SimdOp::kMatrixFill: return "make_filled_simdgroup_matrix";
    case SimdOp::kMatrixLoad: return "simdgroup_load";
    case SimdOp::kMatrixStore: return "simdgroup_store";
    case SimdOp::kMatrixMultiply: return "simdgroup_multiply";
    case SimdOp::kMatrixMultiplyAccumulate: return "simdgroup_multiply_accumulate";
  }
  return "simd_?";
}

bool same_site(const std::source_location& a, const std::source_location& b) {
  return a.line() == b.line() && a.column() == b.column() && std::strcmp(a.file_name(), b.file_name()) == 0;
}

// Releases simdgroups whose active lanes all wait at one simd_* call. Returns true on progress;
// sets g.error on divergent calls.
bool resolve_simd(Group& g) {
  bool progress = false;
  for (size_t s = 0; s < g.simd.size(); ++s) {
    const int b = static_cast<int>(s) * kSimdWidth, e = std::min(g.n, b + kSimdWidth);
    int first = -1, waiting = 0, active = 0;
    for (int i = b; i < e; ++i) {
      const Lane& l = g.lanes[i];
      if (l.state == LaneState::kDone) continue;
      ++active;
      if (l.state != LaneState::kSimd) continue;
      ++waiting;
      if (first < 0) {
        first = i;
      } else if (l.op != g.lanes[first].op || !same_site(l.at, g.lanes[first].at)) {
        g.error = "divergent simd_* calls in simdgroup " + std::to_string(s) + ": lane " + std::to_string(first - b) +
                  " at " + op_name(g.lanes[first].op) + " (" + where(g.lanes[first].at) + "), lane " +
                  std::to_string(i - b) + " at " + op_name(l.op) + " (" + where(l.at) +
                  "); keep simd_* calls in simdgroup-uniform control flow";
        return false;
      }
    }
    if (waiting == 0 || waiting != active) continue;
    uint64_t mask = 0;
    for (int i = b; i < e; ++i)
      if (g.lanes[i].state == LaneState::kSimd) {
        g.lanes[i].state = LaneState::kReady;
        mask |= uint64_t{1} << (i - b);
      }
    g.simd[s].active[g.simd[s].parity] = mask;
    g.simd[s].parity ^= 1;
    progress = true;
  }
  return progress;
}

// Nothing can run and no simdgroup can be released: either every live lane waits at the same
// barrier (release it) or the kernel is broken.
void resolve_barrier(Group& g) {
  int first = -1, done = 0;
  for (int i = 0; i < g.n; ++i) {
    const Lane& l = g.lanes[i];
    if (l.state == LaneState::kDone) {
      ++done;
      continue;
    }
    if (l.state == LaneState::kSimd) {
      const int b = i / kSimdWidth * kSimdWidth;
      int other = -1;
      for (int j = b; j < std::min(g.n, b + kSimdWidth); ++j)
        if (g.lanes[j].state == LaneState::kBarrier) other = j;
      g.error = "lane " + std::to_string(i) + " waits at " + op_name(l.op) + " (" + where(l.at) + ") while lane " +
                std::to_string(other) + " of its simdgroup waits at threadgroup_barrier (" +
                (other >= 0 ? where(g.lanes[other].at) : std::string("?")) + "): divergent control flow";
      return;
    }
    if (first < 0) {
      first = i;
    } else if (!same_site(l.at, g.lanes[first].at)) {
      g.error = "lanes wait at different barriers: lane " + std::to_string(first) + " at " + where(g.lanes[first].at) +
                ", lane " + std::to_string(i) + " at " + where(l.at);
      return;
    }
  }
  if (first < 0) return;  // all done
  if (done > 0) {
    g.error = "lane(s) " + lane_list(g, LaneState::kDone) + " returned while " + std::to_string(g.n - done) +
              " lanes wait at threadgroup_barrier (" + where(g.lanes[first].at) +
              "): every lane must reach every barrier";
    return;
  }
  for (int i = 0; i < g.n; ++i) g.lanes[i].state = LaneState::kReady;
}

// Runs one threadgroup to completion (or to the first error, left in g.error).
void run_group(Group& g, bool reverse) {
  for (int i = 0; i < g.n; ++i) {
    Lane& l = g.lanes[i];
    l.state = LaneState::kReady;
    getcontext(&l.ctx);
    l.ctx.uc_stack.ss_sp = l.stack;
    l.ctx.uc_stack.ss_size = kStackBytes;
    l.ctx.uc_link = nullptr;
    makecontext(&l.ctx, lane_entry, 0);
  }
  for (SimdGroup& s : g.simd) s.parity = 0;
  g.tg_declared.clear();
#ifdef EMU_TSAN
  __tsan_release(&g.start_sync);
#endif
  t_group = &g;
  for (;;) {
    bool ran = false;
    for (int k = 0; k < g.n; ++k) {
      const int i = reverse ? g.n - 1 - k : k;
      if (g.lanes[i].state != LaneState::kReady) continue;
      switch_to_lane(g, i);
      ran = true;
      if (!g.error.empty()) return;
    }
    if (resolve_simd(g) || ran) continue;
    if (!g.error.empty()) return;
    bool all_done = true;
    for (int i = 0; i < g.n; ++i) all_done = all_done && g.lanes[i].state == LaneState::kDone;
    if (all_done) break;
    resolve_barrier(g);
    if (!g.error.empty()) return;
  }
#ifdef EMU_TSAN
  __tsan_acquire(&g.end_sync);
#endif
  t_group = nullptr;
}

// ---------------------------------------------------------------------------------------------
// Dispatch

int fail(char* err, uint64_t cap, int code, const std::string& msg) {
  if (err != nullptr && cap > 0) std::snprintf(err, cap, "%s", msg.c_str());
  return code;
}

std::vector<void*> acquire_stacks() {
  StackPool& p = stack_pool();
  std::lock_guard<std::mutex> lock(p.mu);
  if (!p.free_sets.empty()) {
    std::vector<void*> s = std::move(p.free_sets.back());
    p.free_sets.pop_back();
    return s;
  }
  return std::vector<void*>(kMaxLanes, nullptr);
}

void release_stacks(std::vector<void*> s) {
  StackPool& p = stack_pool();
  std::lock_guard<std::mutex> lock(p.mu);
  p.free_sets.push_back(std::move(s));
}

struct Worker {
  const emu_dispatch_t* d;
  const KernelInfo* info;
  std::atomic<uint64_t>* next;
  uint64_t total;
  std::mutex* err_mu;
  std::string* err;
  std::atomic<bool>* stop;
};

void worker_main(const Worker& w) {
  const emu_dispatch_t& d = *w.d;
  Group g;
  g.info = w.info;
  g.kernel = d.kernel;
  g.n = static_cast<int>(d.threads[0] * d.threads[1] * d.threads[2]);
  g.lanes.resize(static_cast<size_t>(g.n));
  g.simd.resize(static_cast<size_t>((g.n + kSimdWidth - 1) / kSimdWidth));
  std::vector<void*> stacks = acquire_stacks();
  std::vector<std::vector<unsigned char>> tg(EMU_MAX_TG_MEM);
  void* tg_ptr[EMU_MAX_TG_MEM] = {};
  for (int i = 0; i < EMU_MAX_TG_MEM; ++i) {
    tg[i].resize(d.tg_bytes[i]);
    tg_ptr[i] = d.tg_bytes[i] ? tg[i].data() : nullptr;
  }
#ifdef EMU_TSAN
  g.sched_fiber = __tsan_get_current_fiber();
#endif
  for (int i = 0; i < g.n; ++i) {
    if (stacks[i] == nullptr) {
      void* s = mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (s == MAP_FAILED) {
        std::lock_guard<std::mutex> lock(*w.err_mu);
        if (w.err->empty()) *w.err = "cannot map a fiber stack";
        w.stop->store(true);
        release_stacks(std::move(stacks));
        return;
      }
      stacks[i] = s;
    }
    Lane& l = g.lanes[i];
    l.stack = stacks[i];
#ifdef EMU_TSAN
    l.fiber = __tsan_create_fiber(0);
#endif
    l.lc.buffers = d.buffers;
    l.lc.tg_mem = tg_ptr;
  }
  const uint32_t tx = d.threads[0], ty = d.threads[1];
  const uint32_t n_sg = static_cast<uint32_t>(g.simd.size());
  for (;;) {
    if (w.stop->load(std::memory_order_relaxed)) break;
    const uint64_t gi = w.next->fetch_add(1);
    if (gi >= w.total) break;
    const uint32_t gx = static_cast<uint32_t>(gi % d.groups[0]);
    const uint32_t gy = static_cast<uint32_t>(gi / d.groups[0] % d.groups[1]);
    const uint32_t gz = static_cast<uint32_t>(gi / d.groups[0] / d.groups[1]);
    for (int i = 0; i < EMU_MAX_TG_MEM; ++i)
      if (!tg[i].empty()) std::memset(tg[i].data(), 0xFF, tg[i].size());  // poison
    for (int i = 0; i < g.n; ++i) {
      auto& v = g.lanes[i].lc.v;
      const uint32_t lx = static_cast<uint32_t>(i) % tx, ly = static_cast<uint32_t>(i) / tx % ty,
                     lz = static_cast<uint32_t>(i) / tx / ty;
      const uint32_t tpig[3] = {gx * tx + lx, gy * ty + ly, gz * d.threads[2] + lz};
      const uint32_t vals[11][3] = {
          {tpig[0], tpig[1], tpig[2]},
          {lx, ly, lz},
          {gx, gy, gz},
          {d.threads[0], d.threads[1], d.threads[2]},
          {d.groups[0], d.groups[1], d.groups[2]},
          {d.groups[0] * d.threads[0], d.groups[1] * d.threads[1], d.groups[2] * d.threads[2]},
          {static_cast<uint32_t>(i), 0, 0},
          {static_cast<uint32_t>(i) % kSimdWidth, 0, 0},
          {static_cast<uint32_t>(i) / kSimdWidth, 0, 0},
          {kSimdWidth, 0, 0},
          {n_sg, 0, 0},
      };
      std::memcpy(v, vals, sizeof(vals));
    }
    run_group(g, (d.flags & EMU_FLAG_REVERSE) != 0);
    if (!g.error.empty()) {
      std::lock_guard<std::mutex> lock(*w.err_mu);
      if (w.err->empty())
        *w.err = "threadgroup (" + std::to_string(gx) + "," + std::to_string(gy) + "," + std::to_string(gz) +
                 "): " + g.error;
      w.stop->store(true);
      t_group = nullptr;
      break;
    }
  }
#ifdef EMU_TSAN
  for (Lane& l : g.lanes) __tsan_destroy_fiber(l.fiber);
#endif
  release_stacks(std::move(stacks));
}

}  // namespace

Registrar::Registrar(const char* name, const KernelInfo& info) {
  if (registry().emplace(name, info).second) names().emplace_back(name);
}

// ---------------------------------------------------------------------------------------------
// Calls made from lane fibers (emu_sync.h)

void barrier(std::source_location at) {
  Group& g = *t_group;
  Lane& l = g.lanes[t_lane];
#ifdef EMU_TSAN
  __tsan_release(&g.barrier_sync);
#endif
  l.state = LaneState::kBarrier;
  l.at = at;
  yield_lane();
#ifdef EMU_TSAN
  __tsan_acquire(&g.barrier_sync);
#endif
}

SimdView simd_rendezvous(SimdOp op, const void* value, size_t bytes, std::source_location at) {
  Group& g = *t_group;
  const int i = t_lane;
  Lane& l = g.lanes[i];
  SimdGroup& s = g.simd[static_cast<size_t>(i / kSimdWidth)];
  const int lane = i % kSimdWidth;
  l.parity = s.parity;
  if (bytes > 0) std::memcpy(s.slots[l.parity][lane], value, std::min(bytes, kSimdSlotBytes));
#ifdef EMU_TSAN
  __tsan_release(&s.sync);
#endif
  l.state = LaneState::kSimd;
  l.op = op;
  l.at = at;
  yield_lane();
#ifdef EMU_TSAN
  __tsan_acquire(&s.sync);
#endif
  return SimdView{&s.slots[l.parity][0][0], s.active[l.parity], lane};
}

void lane_fail(const char* what, std::source_location at) {
  Group& g = *t_group;
  if (g.error.empty()) g.error = "lane " + std::to_string(t_lane) + ": " + what + " (" + where(at) + ")";
  g.lanes[t_lane].state = LaneState::kFailed;
  yield_lane();
  __builtin_unreachable();  // the scheduler never resumes a failed lane
}

void tg_declare(void* p, size_t bytes) {
  Group& g = *t_group;
  if (std::find(g.tg_declared.begin(), g.tg_declared.end(), p) != g.tg_declared.end()) return;
  g.tg_declared.push_back(p);
#ifdef EMU_TSAN
  __tsan_ignore_thread_begin();  // memset is intercepted: the poison must not count as this lane's write
#endif
  std::memset(p, 0xFF, bytes);
#ifdef EMU_TSAN
  __tsan_ignore_thread_end();
#endif
}

}  // namespace emu

// ---------------------------------------------------------------------------------------------
// C ABI

extern "C" {

__attribute__((visibility("default"))) int emu_abi_version(void) { return EMU_ABI_VERSION; }

__attribute__((visibility("default"))) int emu_kernel_count(void) { return static_cast<int>(emu::names().size()); }

__attribute__((visibility("default"))) const char* emu_kernel_name(int i) {
  if (i < 0 || i >= emu_kernel_count()) return nullptr;
  return emu::names()[static_cast<size_t>(i)].c_str();
}

__attribute__((visibility("default"))) int emu_dispatch(const emu_dispatch_t* d, char* err, uint64_t cap) {
  using emu::fail;
  if (d == nullptr || d->kernel == nullptr) return fail(err, cap, EMU_ERR_INVALID, "[metal-emu] dispatch: no kernel");
  const std::string k = d->kernel;
  const std::string tag = "[metal-emu] kernel " + k + ": ";
  const auto it = emu::registry().find(k);
  if (it == emu::registry().end()) return fail(err, cap, EMU_ERR_INVALID, tag + "no such kernel in this library");
  const emu::KernelInfo& info = it->second;
  const uint64_t lanes = uint64_t{d->threads[0]} * d->threads[1] * d->threads[2];
  if (lanes == 0 || lanes > emu::kMaxLanes)
    return fail(err, cap, EMU_ERR_INVALID,
                tag + "threads per threadgroup: expected 1..1024, got " + std::to_string(lanes));
  for (int i = 0; i < info.n_params; ++i) {
    const emu::ParamInfo& p = info.params[i];
    const std::string what = std::string("'") + p.name + "'";
    if (p.kind == emu::ParamKind::kBuffer) {
      const emu_buffer& b = d->buffers[p.index];
      if (b.ptr == nullptr)
        return fail(err, cap, EMU_ERR_UNBOUND,
                    tag + "buffer(" + std::to_string(p.index) + ") " + what + " is not bound (" + info.file + ")");
      if (p.ref_bytes > b.nbytes)
        return fail(err, cap, EMU_ERR_UNBOUND,
                    tag + "buffer(" + std::to_string(p.index) + ") " + what + ": expected at least " +
                        std::to_string(p.ref_bytes) + " bytes, got " + std::to_string(b.nbytes));
    } else if (p.kind == emu::ParamKind::kThreadgroup && d->tg_bytes[p.index] == 0) {
      return fail(err, cap, EMU_ERR_UNBOUND,
                  tag + "threadgroup(" + std::to_string(p.index) + ") " + what + " has no memory bound");
    }
  }
  const uint64_t total = uint64_t{d->groups[0]} * d->groups[1] * d->groups[2];
  if (total == 0) return EMU_OK;
  int workers = d->workers;
  if (workers <= 0) workers = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  workers = static_cast<int>(std::min<uint64_t>(static_cast<uint64_t>(workers), total));
  std::atomic<uint64_t> next{0};
  std::atomic<bool> stop{false};
  std::mutex err_mu;
  std::string msg;
  const emu::Worker w{d, &info, &next, total, &err_mu, &msg, &stop};
  // DEBT: worker threads are spawned per dispatch (~20 us each); a persistent pool is owed once
  // the emulated-Metal device runs whole models through here.
  std::vector<std::thread> threads;
  for (int i = 1; i < workers; ++i) threads.emplace_back([&w] { emu::worker_main(w); });
  emu::worker_main(w);
  for (std::thread& t : threads) t.join();
  if (!msg.empty()) return fail(err, cap, EMU_ERR_KERNEL, tag + msg);
  return EMU_OK;
}

}  // extern "C"
