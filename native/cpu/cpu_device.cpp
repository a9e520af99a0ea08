// The CPU device: host memory buffers, a persistent thread pool, and the kernels in kernels.cpp.
#include "cpu/cpu_device.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/quants.h"
#include "cpu/repack.h"
#include "cpu/tile.h"

namespace metallic {

namespace {

constexpr size_t kAlign = 64;
constexpr size_t kMapThreshold = size_t{1} << 20;       // buffers from this size up are mmap'd
constexpr size_t kRepackSliceBytes = size_t{16} << 20;  // source bytes repacked between page drops

class CpuDevice final : public Device {
 public:
  CpuDevice(int threads, const DeviceLimits& lim)
      : lim_kv_(lim.kv_capacity), lim_head_dim_(lim.head_dim), lim_cols_(lim.max_cols), pool_(threads) {
    const auto act = static_cast<size_t>(lim.max_tokens * lim.max_cols);
    configure_tiles(lim);
    // The tile kernels load whole tiles of kAmxTokens activation rows (the rows past a call's
    // tokens are read, their sums ignored).
    const int64_t q_rows = scratch_.amx_min_tokens > 0
                               ? (lim.max_tokens + cpu::kAmxTokens - 1) / cpu::kAmxTokens * cpu::kAmxTokens
                               : lim.max_tokens;
    scratch_.act_q.resize(static_cast<size_t>(q_rows * lim.max_cols));
    scratch_.act_d.resize(act / 32 + 1);
    scratch_.act_s.resize(act / 32 + 1);
    // The tile layout (cpu/repack.h ActRows) gives a last partial tile all kTile token slots.
    const auto tiled = static_cast<size_t>((lim.max_tokens + cpu::kTile - 1) / cpu::kTile * cpu::kTile * lim.max_cols);
    scratch_.act_qt.resize(tiled);
    scratch_.act_dt.resize(tiled / 32 + 1);
    scratch_.act_st.resize(tiled / 32 + 1);
    scratch_.max_group = std::max(1, lim.max_group);
    scratch_.scores_stride = scratch_.max_group * (lim.kv_capacity + lim.head_dim);
    scratch_.scores.resize(static_cast<size_t>(pool_.size()) * static_cast<size_t>(scratch_.scores_stride));
    scratch_.rope_cs.resize(static_cast<size_t>(lim.max_tokens * lim.head_dim));
    const auto n_threads = static_cast<size_t>(pool_.size());
    const auto q_heads = n_threads * static_cast<size_t>(scratch_.max_group);  // a job's query heads per thread
    scratch_.attn_q.resize(q_heads * static_cast<size_t>(lim.head_dim));
    scratch_.attn_qd.resize(q_heads * static_cast<size_t>(lim.head_dim / 32 + 1));
    scratch_.attn_qs.resize(q_heads * static_cast<size_t>(lim.head_dim / 32 + 1));
    scratch_.split_bytes = std::max<int64_t>(0, lim.attn_split_bytes);
    const auto heads = static_cast<size_t>(std::max(1, lim.max_heads));
    scratch_.split_scores.resize(heads * static_cast<size_t>(lim.kv_capacity));
    scratch_.split_q.resize(heads * static_cast<size_t>(lim.head_dim));
    scratch_.split_qd.resize(heads * static_cast<size_t>(lim.head_dim / 32 + 1));
    scratch_.split_qs.resize(heads * static_cast<size_t>(lim.head_dim / 32 + 1));
  }

  // Resolves DeviceLimits::matmul_tiles (core/device.h) into the scratch's AMX settings. kAuto
  // reads METALLIC_AMX: unset, "" or "1" choose by amx_status(), "0" the SIMD kernels, "emulate"
  // the emulated tiles (tests of whole models).
  void configure_tiles(const DeviceLimits& lim) {
    const cpu::AmxStatus& amx = cpu::amx_status();
    TileEngine engine = lim.matmul_tiles;
    if (engine == TileEngine::kAuto) {
      const char* env = std::getenv("METALLIC_AMX");
      const std::string v = env != nullptr ? env : "";
      check(v.empty() || v == "0" || v == "1" || v == "emulate", ErrorCode::kInvalidArgument, "cpu",
            "METALLIC_AMX: expected 0, 1 or emulate, got '" + v + "'");
      if (v == "0") engine = TileEngine::kSimd;
      if (v == "emulate") engine = TileEngine::kAmxEmulated;
    }
    switch (engine) {
      case TileEngine::kAuto:
        if (!amx.usable) return;
        scratch_.amx_min_tokens = cpu::kAmxMinTokens;
        scratch_.amx_backend = cpu::AmxBackend::kHardware;
        break;
      case TileEngine::kSimd: return;
      case TileEngine::kAmx:
        check(amx.usable, ErrorCode::kDeviceUnavailable, "cpu", "matmul tiles 'amx' are not available: " + amx.reason);
        scratch_.amx_min_tokens = 1;
        scratch_.amx_backend = cpu::AmxBackend::kHardware;
        break;
      case TileEngine::kAmxEmulated:
        check(cpu::x86::available(), ErrorCode::kDeviceUnavailable, "cpu",
              "matmul tiles 'amx-emulated' need the AVX2 kernels, which this build does not have");
        scratch_.amx_min_tokens = 1;
        scratch_.amx_backend = cpu::AmxBackend::kEmulated;
        break;
    }
    scratch_.amx_stride = (cpu::amx_scratch_bytes(lim.max_cols) + 63) / 64 * 64;
    scratch_.amx_scratch.resize(scratch_.amx_stride * static_cast<size_t>(pool_.size()) + 64);
  }

  ~CpuDevice() override {
    for (Buffer& b : prepared_) release(b);
  }

  const char* name() const override { return "cpu"; }

  Buffer alloc(size_t nbytes) override {
    if (nbytes >= kMapThreshold) {
      // Large buffers (weights repacks, KV cache, activations) come straight from the kernel:
      // zero pages that cost no RSS until touched, and munmap returns them at release (a heap
      // block would stay in the process after free).
      void* p = mmap(nullptr, nbytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED)
        fail(ErrorCode::kOutOfMemory, "cpu.alloc", "cannot map " + std::to_string(nbytes) + " bytes");
      return Buffer{p, nbytes, p};
    }
    const size_t rounded = (nbytes + kAlign - 1) / kAlign * kAlign;
    void* p = std::calloc(1, rounded + kAlign);
    if (p == nullptr)
      fail(ErrorCode::kOutOfMemory, "cpu.alloc", "cannot allocate " + std::to_string(nbytes) + " bytes");
    // Keep the raw pointer in `handle` for release(); hand out the aligned address.
    const auto raw = reinterpret_cast<uintptr_t>(p);
    const uintptr_t aligned = (raw + kAlign - 1) / kAlign * kAlign;
    return Buffer{reinterpret_cast<void*>(aligned), nbytes, p};
  }

  Buffer wrap_host(const void* ptr, size_t nbytes) override { return Buffer{const_cast<void*>(ptr), nbytes, nullptr}; }

  void release(Buffer& buf) override {
    if (buf.handle != nullptr) {
      if (buf.nbytes >= kMapThreshold) {
        munmap(buf.handle, buf.nbytes);
      } else {
        std::free(buf.handle);
      }
    }
    buf = Buffer{};
  }

  Tensor prepare_weight(const Tensor& view, bool evictable) override {
    // Repack 32-wide quantized weights into 8-row interleaved blocks when this build has the
    // kernels (AVX2; Q8_0's storage follows the build: repack.h kQ8x8Bias).
    const size_t bb = cpu::interleaved_block_bytes(view.dtype);
    if (bb == 0 || view.rows < 8 || view.layout != Layout::kRows || cpu::dot_x8_fn(view.dtype) == nullptr) return view;
    const int64_t groups = view.rows / 8;
    const size_t group_stride = bb * static_cast<size_t>(view.cols / dtype_info(view.dtype).block_elems);
    const size_t tail = static_cast<size_t>(view.rows % 8) * view.row_stride;
    Buffer b = alloc(static_cast<size_t>(groups) * group_stride + tail);
    prepared_.push_back(b);
    Tensor out = view;
    out.buf = b;
    out.offset = 0;
    out.layout = Layout::kInterleaved8;
    out.group_stride = group_stride;
    // In slices of ~kRepackSliceBytes of source, each slice's file pages dropped once repacked:
    // the process holds the new copy plus one slice of the old, not both copies of a large
    // tensor (Gemma 3's 178 MB tied embedding would otherwise add 178 MB to peak RSS at load).
    const int64_t slice = std::max<int64_t>(1, static_cast<int64_t>(kRepackSliceBytes / (8 * view.row_stride)));
    for (int64_t s0 = 0; s0 < groups; s0 += slice) {
      const int64_t s1 = std::min(groups, s0 + slice);
      pool_.parallel_for(
          s1 - s0, [&](int64_t g0, int64_t g1, int) { cpu::repack_groups(view, out, s0 + g0, s0 + g1); }, 8);
      if (evictable) drop_pages(view.row(0), view.row_stride * static_cast<size_t>(8 * s1));
    }
    if (tail != 0) std::memcpy(static_cast<char*>(b.host) + groups * group_stride, view.row(groups * 8), tail);
    if (evictable) drop_pages(view.row(0), view.row_stride * static_cast<size_t>(view.rows));
    return out;
  }

  void copy_in(const Buffer& dst, size_t offset, const void* src, size_t nbytes) override {
    check(offset + nbytes <= dst.nbytes, ErrorCode::kInvalidArgument, "cpu.copy_in", "range outside buffer");
    std::memcpy(static_cast<char*>(dst.host) + offset, src, nbytes);
  }

  void copy_out(const Buffer& src, size_t offset, void* dst, size_t nbytes) override {
    check(offset + nbytes <= src.nbytes, ErrorCode::kInvalidArgument, "cpu.copy_out", "range outside buffer");
    std::memcpy(dst, static_cast<const char*>(src.host) + offset, nbytes);
  }

  bool supports(OpCode op, DType dtype) const override {
    switch (op) {
      case OpCode::kEmbed:
      case OpCode::kMatMul:
      case OpCode::kNormMatMul:
      case OpCode::kNormSwiGlu: return true;  // every DType has CPU traits (dtype: the weights')
      case OpCode::kRmsNorm:
      case OpCode::kSwiGlu: return dtype == DType::kF32;
      case OpCode::kRopeKv:
      case OpCode::kAttention:  // the KV cache's dtype
        return dtype == DType::kF32 || dtype == DType::kF16 || dtype == DType::kQ8_0 || dtype == DType::kQ4_0;
      case OpCode::kArgmax: return dtype == DType::kF32;
      case OpCode::kSample: return false;  // the host sampler is the CPU's sampler
    }
    return false;
  }

  // Rows the op reads and writes lie inside the cache (per layer: the whole context or a ring).
  void check_kv(const OpCall& call, const char* op) const {
    const OpParams& p = call.p;
    const Tensor& kc = call.op == OpCode::kRopeKv ? call.t[3] : call.t[1];
    if ((p.n_seqs == 0 && !kv_positions_ok(p)) || kc.rows < p.n_head_kv * p.kv_capacity || p.kv_capacity > lim_kv_ ||
        p.head_dim != lim_head_dim_ || p.n_head_kv < 1 || p.n_head % p.n_head_kv != 0 ||
        static_cast<int64_t>(p.n_head) * p.head_dim > lim_cols_)
      fail(ErrorCode::kInvalidArgument, "cpu.run",
           std::string(op) + ": positions " + std::to_string(p.pos0) + "+" + std::to_string(p.n_tokens) + " (window " +
               std::to_string(p.window) + "), " + std::to_string(p.n_head) + "/" + std::to_string(p.n_head_kv) +
               " heads of " + std::to_string(p.head_dim) + " do not fit the device's limits or a KV cache of " +
               std::to_string(p.kv_capacity) + " rows per head");
    const Tensor& vc = call.op == OpCode::kRopeKv ? call.t[4] : call.t[2];
    const int32_t block = dtype_info(kc.dtype).block_elems;
    if (!supports(call.op, kc.dtype) || vc.dtype != kc.dtype || p.head_dim % block != 0 ||
        kc.row_stride < row_bytes(kc.dtype, p.head_dim) || vc.row_stride != kc.row_stride)
      fail(ErrorCode::kUnsupportedDType, "cpu.run",
           std::string(op) + ": KV cache " + dtype_name(kc.dtype) + "/" + dtype_name(vc.dtype) + " with head_dim " +
               std::to_string(p.head_dim) + ": expected one of F32, F16, Q8_0, Q4_0 for both, head_dim a multiple of " +
               std::to_string(block) + " and rows of " + std::to_string(row_bytes(kc.dtype, p.head_dim)) + " bytes");
    if (p.n_seqs > 0)  // a ragged batch: every run fits its slot's cache (core/device.h)
      for_each_run(call, "cpu.run", [](void*, int64_t, int64_t, int32_t, int64_t) {}, nullptr);
  }

  void run(const OpCall& call) override {
    ++counters_.dispatches;
    switch (call.op) {
      case OpCode::kEmbed: cpu::op_embed(call, pool_); return;
      case OpCode::kRmsNorm: cpu::op_rms_norm(call, pool_); return;
      case OpCode::kMatMul: cpu::op_matmul(call, pool_, scratch_); return;
      case OpCode::kRopeKv:
        check_kv(call, "rope_kv");
        cpu::op_rope_kv(call, pool_, scratch_);
        return;
      case OpCode::kAttention:
        check_kv(call, "attention");
        cpu::op_attention(call, pool_, scratch_);
        return;
      case OpCode::kSwiGlu: cpu::op_swiglu(call, pool_); return;
      case OpCode::kArgmax: argmax(call); return;
      case OpCode::kSample: fail(ErrorCode::kUnsupportedDType, "cpu.run", "sample: draw with the host Sampler");
      case OpCode::kNormMatMul:
      case OpCode::kNormSwiGlu:  // the plain ops: the CPU kernels gain nothing from fusing these
        --counters_.dispatches;  // counted as the ops they become
        decompose(call, [](void* self, const OpCall& op) { static_cast<CpuDevice*>(self)->run(op); }, this);
        return;
    }
    fail(ErrorCode::kKernelFailure, "cpu.run", "unknown op");
  }

  void synchronize() override {}  // ops run synchronously

  void host_parallel(int64_t n, void (*fn)(void*, int64_t), void* ctx) override {
    pool_.parallel_for(n, [&](int64_t b, int64_t e, int) {
      for (int64_t i = b; i < e; ++i) fn(ctx, i);
    });
  }

  // First index of the largest logit; NaN never wins; -1 when no logit is > -inf.
  static void argmax(const OpCall& c) {
    const float* x = c.t[0].ptr<const float>();
    int32_t best = -1;
    float bv = -INFINITY;
    for (int64_t i = 0; i < c.t[0].cols; ++i)
      if (x[i] > bv) {
        bv = x[i];
        best = static_cast<int32_t>(i);
      }
    *c.t[2].ptr<int32_t>() = best;
  }

  // dispatches: ops run (fused ops count as the plain ops they run as); bytes are not counted.
  DeviceCounters counters() const override { return counters_; }

 private:
  DeviceCounters counters_;
  int64_t lim_kv_;        // the largest cache a layer may have
  int32_t lim_head_dim_;  // the scores scratch is sized for these heads
  int64_t lim_cols_;

  // Drops the whole pages inside [p, p + n) of a read-only shared file mapping from this
  // process (they stay in the page cache and re-fault from the file if ever touched again).
  static void drop_pages(const void* p, size_t n) {
    const auto page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
    const auto begin = (reinterpret_cast<uintptr_t>(p) + page - 1) / page * page;
    const auto end = (reinterpret_cast<uintptr_t>(p) + n) / page * page;
    if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);  // best effort
  }

  std::vector<Buffer> prepared_;  // repacked weights owned by the device
  cpu::ThreadPool pool_;
  cpu::Scratch scratch_;
};

}  // namespace

std::unique_ptr<Device> make_cpu_device(int threads, const DeviceLimits& limits) {
  check(threads >= 1, ErrorCode::kInvalidArgument, "cpu", "threads: expected >= 1, got " + std::to_string(threads));
  return std::make_unique<CpuDevice>(threads, limits);
}

}  // namespace metallic
