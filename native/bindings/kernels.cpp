// Test entry points: each CPU kernel (reference and selected SIMD version) and each device op,
// callable from numpy so tests/python/test_kernels.py can check them against numpy references.
#include "cpu/kernels.h"

#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <vector>

#include "bindings/bindings.h"
#include "core/device.h"
#include "cpu/amx.h"
#include "cpu/quantize.h"
#include "cpu/quants.h"
#include "cpu/thread_pool.h"
#include "cpu/vnni.h"

namespace nb = nanobind;

namespace metallic::bindings {

namespace {

using F32In = nb::ndarray<const float, nb::c_contig, nb::device::cpu>;
using BytesIn = nb::ndarray<const uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

template <typename T>
nb::ndarray<nb::numpy, T> owned_array(std::vector<T>&& v, std::initializer_list<size_t> shape) {
  auto* heap = new std::vector<T>(std::move(v));
  nb::capsule owner(heap, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
  return nb::ndarray<nb::numpy, T>(heap->data(), shape, owner);
}

int64_t checked_cols(DType dt, int64_t cols, const char* where) {
  const DTypeInfo info = dtype_info(dt);
  check(cols > 0 && cols % info.block_elems == 0, ErrorCode::kShapeMismatch, where,
        "cols: expected a positive multiple of " + std::to_string(info.block_elems) + ", got " + std::to_string(cols));
  return cols;
}

// The scalar reference dot of a quantized type (the traits table holds the selected version).
cpu::DotQ8Fn ref_dot_q8(DType dt) {
  switch (dt) {
    case DType::kQ8_0: return cpu::dot_q8_0_q8_ref;
    case DType::kQ4_0: return cpu::dot_q4_0_q8_ref;
    case DType::kQ4_1: return cpu::dot_q4_1_q8_ref;
    case DType::kQ5_0: return cpu::dot_q5_0_q8_ref;
    case DType::kQ5_1: return cpu::dot_q5_1_q8_ref;
    case DType::kQ4_K: return cpu::dot_q4_K_q8_ref;
    case DType::kQ5_K: return cpu::dot_q5_K_q8_ref;
    case DType::kQ6_K: return cpu::dot_q6_K_q8_ref;
    case DType::kF32:
    case DType::kF16:
    case DType::kBF16: break;
  }
  fail(ErrorCode::kUnsupportedDType, "kernels", std::string(dtype_name(dt)) + " has no quantized dot");
}

TileEngine tile_engine(const std::string& name) {
  if (name == "auto") return TileEngine::kAuto;
  if (name == "simd") return TileEngine::kSimd;
  if (name == "amx") return TileEngine::kAmx;
  if (name == "amx-emulated") return TileEngine::kAmxEmulated;
  fail(ErrorCode::kInvalidArgument, "kernels.matmul",
       "tiles: expected auto, simd, amx or amx-emulated, got '" + name + "'");
}

Tensor host_tensor(Device& dev, const void* p, DType dt, int64_t rows, int64_t cols) {
  const size_t rb = row_bytes(dt, cols);
  return Tensor{dev.wrap_host(p, rb * static_cast<size_t>(rows)), 0, dt, rows, cols, rb};
}

// One matmul op on a fresh CPU device (kernels.matmul, kernels.matmul_seconds): validates the
// arguments, owns the device and the output; prepare() repacks W when asked.
struct MatmulCase {
  int64_t nt = 0;
  std::unique_ptr<Device> dev;
  OpCall c{OpCode::kMatMul};
  std::vector<float> out;
  bool repack;

  MatmulCase(int dtype, const BytesIn& w, int64_t rows, int64_t cols, const F32In& x, int threads, bool repack_w,
             const std::optional<F32In>& bias, const std::optional<F32In>& accumulate_into, const std::string& tiles)
      : repack(repack_w) {
    const DType dt = dtype_from_int(dtype, "kernels.matmul");
    checked_cols(dt, cols, "kernels.matmul");
    check(w.shape(0) == row_bytes(dt, cols) * static_cast<size_t>(rows) && rows > 0, ErrorCode::kShapeMismatch,
          "kernels.matmul", "weight bytes do not match rows x cols");
    check(x.size() % static_cast<size_t>(cols) == 0 && x.size() > 0, ErrorCode::kShapeMismatch, "kernels.matmul",
          "x: expected a multiple of cols values");
    nt = static_cast<int64_t>(x.size()) / cols;
    check(!bias || static_cast<int64_t>(bias->size()) == rows, ErrorCode::kShapeMismatch, "kernels.matmul",
          "bias: expected rows values");
    check(!accumulate_into || static_cast<int64_t>(accumulate_into->size()) == nt * rows, ErrorCode::kShapeMismatch,
          "kernels.matmul", "accumulate_into: expected (tokens, rows) values");
    DeviceLimits lim;
    lim.max_tokens = nt;
    lim.max_cols = cols;
    lim.matmul_tiles = tile_engine(tiles);
    dev = make_device("cpu", threads, lim);
    out.resize(static_cast<size_t>(nt * rows));
    if (accumulate_into) std::memcpy(out.data(), accumulate_into->data(), out.size() * sizeof(float));
    c.t[0] = host_tensor(*dev, x.data(), DType::kF32, nt, cols);
    c.t[1] = host_tensor(*dev, w.data(), dt, rows, cols);
    if (bias) c.t[4] = host_tensor(*dev, bias->data(), DType::kF32, 1, rows);
    c.t[7] = host_tensor(*dev, out.data(), DType::kF32, nt, rows);
    c.p.n_tokens = nt;
    c.p.n_weights = 1;
    c.p.accumulate = accumulate_into.has_value();
  }

  void prepare() {
    if (repack) c.t[1] = dev->prepare_weight(c.t[1], false);
  }
};

}  // namespace

void init_kernels(nb::module_& m) {
  nb::module_ k = m.def_submodule("kernels", "CPU kernels exposed for tests");

  k.def("simd_available", [] { return cpu::x86::available(); });
  // Whether the u8 x s8 sums take the vpdpbusd branch (VNNI, or its METALLIC_EMULATE_VNNI
  // stand-in): with it the repacked Q8_0 blocks hold q + 128 (cpu/vnni.h, repack.h).
  k.def("vnni", [] { return METALLIC_VNNI != 0 && cpu::x86::available(); });

  k.def(
      "quantize_act_q8",
      [](F32In x, bool simd) {
        const auto n = static_cast<int64_t>(x.size());
        check(n % 32 == 0, ErrorCode::kShapeMismatch, "kernels.quantize_act_q8",
              "length: expected a multiple of 32, got " + std::to_string(n));
        std::vector<int8_t> q(static_cast<size_t>(n));
        std::vector<float> d(static_cast<size_t>(n / 32)), s(static_cast<size_t>(n / 32));
        (simd ? cpu::quantize_act_fn() : cpu::quantize_act_q8_ref)(x.data(), n, q.data(), d.data(), s.data());
        return std::make_tuple(owned_array(std::move(q), {static_cast<size_t>(n)}),
                               owned_array(std::move(d), {static_cast<size_t>(n / 32)}),
                               owned_array(std::move(s), {static_cast<size_t>(n / 32)}));
      },
      nb::arg("x"), nb::arg("simd") = true);

  k.def(
      "matvec",
      [](int dtype, BytesIn w, int64_t rows, int64_t cols, F32In x, bool simd) {
        const DType dt = dtype_from_int(dtype, "kernels.matvec");
        checked_cols(dt, cols, "kernels.matvec");
        const size_t rb = row_bytes(dt, cols);
        check(rows > 0 && w.shape(0) == rb * static_cast<size_t>(rows), ErrorCode::kShapeMismatch, "kernels.matvec",
              "weight bytes: expected " + std::to_string(rb * static_cast<size_t>(rows)) + ", got " +
                  std::to_string(w.shape(0)));
        check(static_cast<int64_t>(x.size()) % cols == 0 && x.size() > 0, ErrorCode::kShapeMismatch, "kernels.matvec",
              "x: expected a multiple of cols values");
        const int64_t nt = static_cast<int64_t>(x.size()) / cols;
        const cpu::CpuTypeTraits& tr = cpu::cpu_traits(dt);
        std::vector<float> out(static_cast<size_t>(nt * rows));
        std::vector<int8_t> q(static_cast<size_t>(cols));
        std::vector<float> d(static_cast<size_t>(cols / 32 + 1)), s(static_cast<size_t>(cols / 32 + 1));
        for (int64_t t = 0; t < nt; ++t) {
          const float* xt = x.data() + t * cols;
          if (tr.act_q8)
            (simd ? cpu::quantize_act_fn() : cpu::quantize_act_q8_ref)(xt, cols, q.data(), d.data(), s.data());
          for (int64_t r = 0; r < rows; ++r) {
            const void* wr = w.data() + static_cast<size_t>(r) * rb;
            float v = 0.f;
            if (tr.act_q8) {
              const cpu::ActQ8 a{q.data(), d.data(), s.data()};
              v = simd ? tr.dot_q8(cols, wr, a) : ref_dot_q8(dt)(cols, wr, a);
            } else {
              switch (dt) {
                case DType::kF32: v = simd ? tr.dot_f32(cols, wr, xt) : cpu::dot_f32_ref(cols, wr, xt); break;
                case DType::kF16: v = simd ? tr.dot_f32(cols, wr, xt) : cpu::dot_f16_ref(cols, wr, xt); break;
                case DType::kBF16: v = simd ? tr.dot_f32(cols, wr, xt) : cpu::dot_bf16_ref(cols, wr, xt); break;
                case DType::kQ8_0:
                case DType::kQ4_0:
                case DType::kQ4_1:
                case DType::kQ5_0:
                case DType::kQ5_1:
                case DType::kQ4_K:
                case DType::kQ5_K:
                case DType::kQ6_K: break;
              }
            }
            out[static_cast<size_t>(t * rows + r)] = v;
          }
        }
        return owned_array(std::move(out), {static_cast<size_t>(nt), static_cast<size_t>(rows)});
      },
      nb::arg("dtype"), nb::arg("w"), nb::arg("rows"), nb::arg("cols"), nb::arg("x"), nb::arg("simd") = true,
      "y[t, r] = dot(W[r], x[t]) with the kernel the CPU device uses (or the scalar reference).");

  k.def(
      "dequantize",
      [](int dtype, BytesIn w, int64_t rows, int64_t cols) {
        const DType dt = dtype_from_int(dtype, "kernels.dequantize");
        checked_cols(dt, cols, "kernels.dequantize");
        const size_t rb = row_bytes(dt, cols);
        check(rows > 0 && w.shape(0) == rb * static_cast<size_t>(rows), ErrorCode::kShapeMismatch, "kernels.dequantize",
              "weight bytes do not match rows x cols");
        std::vector<float> out(static_cast<size_t>(rows * cols));
        const auto to_f32 = cpu::cpu_traits(dt).to_f32;
        for (int64_t r = 0; r < rows; ++r) to_f32(cols, w.data() + static_cast<size_t>(r) * rb, out.data() + r * cols);
        return owned_array(std::move(out), {static_cast<size_t>(rows), static_cast<size_t>(cols)});
      },
      nb::arg("dtype"), nb::arg("w"), nb::arg("rows"), nb::arg("cols"));

  k.def(
      "f32_to_f16_bits",
      [](F32In x) {
        std::vector<uint16_t> out(x.size());
        cpu::f32_row_to_f16(x.data(), static_cast<int64_t>(x.size()), out.data());  // as the KV cache stores
        return owned_array(std::move(out), {x.size()});
      },
      nb::arg("x"));

  // Device-level ops on the CPU device (threads as given), for op tests with edge sizes.
  k.def(
      "matmul",
      [](int dtype, BytesIn w, int64_t rows, int64_t cols, F32In x, int threads, bool repack, std::optional<F32In> bias,
         std::optional<F32In> accumulate_into, const std::string& tiles) {
        MatmulCase m(dtype, w, rows, cols, x, threads, repack, bias, accumulate_into, tiles);
        {
          nb::gil_scoped_release release;
          m.prepare();
          m.dev->run(m.c);
          m.dev->synchronize();
        }
        return owned_array(std::move(m.out), {static_cast<size_t>(m.nt), static_cast<size_t>(rows)});
      },
      nb::arg("dtype"), nb::arg("w"), nb::arg("rows"), nb::arg("cols"), nb::arg("x"), nb::arg("threads") = 2,
      nb::arg("repack") = false, nb::arg("bias") = nb::none(), nb::arg("accumulate_into") = nb::none(),
      nb::arg("tiles") = "auto",
      "The device matmul op; repack=True first lets the device repack W as it does at load; tiles: the "
      "repacked matmul's kernels (auto, simd, amx, amx-emulated: core/device.h TileEngine).");

  k.def(
      "matmul_seconds",
      [](int dtype, BytesIn w, int64_t rows, int64_t cols, F32In x, int threads, const std::string& tiles,
         int repeats) {
        check(repeats >= 1, ErrorCode::kInvalidArgument, "kernels.matmul_seconds",
              "repeats: expected >= 1, got " + std::to_string(repeats));
        MatmulCase m(dtype, w, rows, cols, x, threads, true, std::nullopt, std::nullopt, tiles);
        std::vector<double> times(static_cast<size_t>(repeats));
        {
          nb::gil_scoped_release release;
          m.prepare();
          m.dev->run(m.c);  // warm-up: pages, caches, the pool's threads
          for (double& t : times) {
            const auto t0 = std::chrono::steady_clock::now();
            m.dev->run(m.c);
            t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
          }
        }
        std::sort(times.begin(), times.end());
        return times[times.size() / 2];
      },
      nb::arg("dtype"), nb::arg("w"), nb::arg("rows"), nb::arg("cols"), nb::arg("x"), nb::arg("threads") = 2,
      nb::arg("tiles") = "auto", nb::arg("repeats") = 5,
      "Median seconds of the device matmul op on repacked W over `repeats` runs after a warm-up (benchmarks).");

  k.def(
      "amx_status",
      [] {
        const cpu::AmxStatus& s = cpu::amx_status();
        return std::make_tuple(s.usable, s.reason);
      },
      "(usable, reason): whether this process can run the AMX-INT8 tiles, and if not, why.");

  k.def(
      "embed",
      [](int dtype, BytesIn w, int64_t rows, int64_t cols, nb::ndarray<const int32_t, nb::ndim<1>, nb::c_contig> ids,
         bool repack) {
        const DType dt = dtype_from_int(dtype, "kernels.embed");
        checked_cols(dt, cols, "kernels.embed");
        check(w.shape(0) == row_bytes(dt, cols) * static_cast<size_t>(rows) && rows > 0, ErrorCode::kShapeMismatch,
              "kernels.embed", "weight bytes do not match rows x cols");
        const auto nt = static_cast<int64_t>(ids.shape(0));
        for (int64_t i = 0; i < nt; ++i)
          check(ids.data()[i] >= 0 && ids.data()[i] < rows, ErrorCode::kInvalidArgument, "kernels.embed",
                "token id outside the table");
        DeviceLimits lim;
        lim.max_tokens = std::max<int64_t>(nt, 1);
        lim.max_cols = cols;
        auto dev = make_device("cpu", 2, lim);
        std::vector<float> out(static_cast<size_t>(nt * cols));
        OpCall c{OpCode::kEmbed};
        c.t[0] = host_tensor(*dev, w.data(), dt, rows, cols);
        if (repack) c.t[0] = dev->prepare_weight(c.t[0], false);
        c.t[1] = host_tensor(*dev, ids.data(), DType::kF32, 1, std::max<int64_t>(nt, 1));
        c.t[2] = host_tensor(*dev, out.data(), DType::kF32, nt, cols);
        c.p.n_tokens = nt;
        c.p.scale = 1.f;
        dev->run(c);
        return owned_array(std::move(out), {static_cast<size_t>(nt), static_cast<size_t>(cols)});
      },
      nb::arg("dtype"), nb::arg("w"), nb::arg("rows"), nb::arg("cols"), nb::arg("ids"), nb::arg("repack") = false);

  k.def(
      "quantize",
      [](int from, BytesIn src, int64_t rows, int64_t cols, int to, int threads, const std::string& name) {
        const DType f = dtype_from_int(from, "kernels.quantize");
        const DType t = dtype_from_int(to, "kernels.quantize");
        check(rows > 0 && cols > 0 && cols % dtype_info(f).block_elems == 0, ErrorCode::kShapeMismatch,
              "kernels.quantize", name + ": bad shape " + std::to_string(rows) + "x" + std::to_string(cols));
        check(src.shape(0) == row_bytes(f, cols) * static_cast<size_t>(rows), ErrorCode::kShapeMismatch,
              "kernels.quantize", name + ": byte count does not match rows x cols");
        check(cols % 32 == 0, ErrorCode::kShapeMismatch, "kernels.quantize",
              name + ": row length " + std::to_string(cols) + " is not a multiple of 32");
        std::vector<uint8_t> out(row_bytes(t, cols) * static_cast<size_t>(rows));
        {
          nb::gil_scoped_release release;
          cpu::ThreadPool pool(threads);
          pool.parallel_for(
              rows,
              [&](int64_t r0, int64_t r1, int) {
                cpu::quantize_rows(f, src.data(), t, out.data(), r0, r1, cols, name.c_str());
              },
              8);
        }
        const size_t n = out.size();
        return owned_array(std::move(out), {n});
      },
      nb::arg("src_dtype"), nb::arg("src"), nb::arg("rows"), nb::arg("cols"), nb::arg("dst_dtype"),
      nb::arg("threads") = 2, nb::arg("name") = "tensor",
      "Quantizes F32/F16/BF16 rows to Q8_0 or Q4_0 (GGML reference rounding); returns the bytes.");

  k.def(
      "axpy",
      [](int dtype, BytesIn row, int64_t n, float a, F32In acc, bool simd) {
        const DType dt = dtype_from_int(dtype, "kernels.axpy");
        checked_cols(dt, n, "kernels.axpy");
        check(row.shape(0) == row_bytes(dt, n) && static_cast<int64_t>(acc.size()) == n, ErrorCode::kShapeMismatch,
              "kernels.axpy", "row bytes or acc length do not match n");
        cpu::AxpyFn fn = cpu::cpu_traits(dt).axpy;
        check(fn != nullptr, ErrorCode::kUnsupportedDType, "kernels.axpy",
              std::string(dtype_name(dt)) + ": expected a KV-cache type (F32, F16, Q8_0, Q4_0)");
        if (!simd) {
          switch (dt) {
            case DType::kF32: fn = cpu::axpy_f32_ref; break;
            case DType::kF16: fn = cpu::axpy_f16_ref; break;
            case DType::kQ8_0: fn = cpu::axpy_q8_0_ref; break;
            case DType::kQ4_0: fn = cpu::axpy_q4_0_ref; break;
            case DType::kBF16:
            case DType::kQ4_1:
            case DType::kQ5_0:
            case DType::kQ5_1:
            case DType::kQ4_K:
            case DType::kQ5_K:
            case DType::kQ6_K: break;  // no axpy: refused above
          }
        }
        std::vector<float> out(acc.data(), acc.data() + n);
        fn(n, a, row.data(), out.data());
        return owned_array(std::move(out), {static_cast<size_t>(n)});
      },
      nb::arg("dtype"), nb::arg("row"), nb::arg("n"), nb::arg("a"), nb::arg("acc"), nb::arg("simd") = true,
      "acc + a * row for one KV-cache row (the selected kernel, or the scalar reference).");

  // rope_kv then attention on the CPU device, positions 0..n-1 in the given chunks (one call pair
  // per chunk: a prefill batch, or 1 for decode steps). RoPE runs with zero frequencies (the
  // identity rotation), so the cache holds k and v as given, in kv_dtype.
  k.def(
      "kv_attention",
      [](int kv_dtype, F32In q, F32In kin, F32In vin, int n_head, int n_head_kv, int head_dim, int64_t kv_capacity,
         int window, float scale, float softcap, const std::vector<int64_t>& chunks, int threads, int64_t split_bytes) {
        const DType dt = dtype_from_int(kv_dtype, "kernels.kv_attention");
        const char* where = "kernels.kv_attention";
        check(n_head > 0 && n_head_kv > 0 && n_head % n_head_kv == 0 && head_dim > 0 && head_dim % 2 == 0,
              ErrorCode::kInvalidArgument, where, "heads: expected n_head_kv | n_head and an even head_dim");
        const int64_t qcols = int64_t{n_head} * head_dim, kvcols = int64_t{n_head_kv} * head_dim;
        int64_t nt = 0, most = 1;
        for (int64_t m : chunks) {
          check(m > 0, ErrorCode::kInvalidArgument, where, "chunks: expected positive sizes");
          nt += m;
          most = std::max(most, m);
        }
        check(nt > 0 && q.size() == static_cast<size_t>(nt * qcols) && kin.size() == static_cast<size_t>(nt * kvcols) &&
                  vin.size() == kin.size(),
              ErrorCode::kShapeMismatch, where, "q, k, v: expected (sum(chunks), heads * head_dim) values each");
        DeviceLimits lim;
        lim.max_tokens = most;
        lim.max_cols = qcols;
        lim.kv_capacity = kv_capacity;
        lim.head_dim = head_dim;
        lim.max_group = n_head / n_head_kv;
        lim.max_heads = n_head;
        if (split_bytes >= 0) lim.attn_split_bytes = split_bytes;
        auto dev = make_device("cpu", threads, lim);
        std::vector<float> qw(q.data(), q.data() + q.size()), kw(kin.data(), kin.data() + kin.size());
        std::vector<float> vw(vin.data(), vin.data() + vin.size()), out(static_cast<size_t>(nt * qcols));
        std::vector<float> freq(static_cast<size_t>(head_dim / 2), 0.f);
        const size_t rb = row_bytes(dt, head_dim);
        const size_t cache_bytes = static_cast<size_t>(n_head_kv * kv_capacity) * rb;
        std::vector<uint8_t> kc(cache_bytes), vc(cache_bytes);
        const Tensor kt{dev->wrap_host(kc.data(), cache_bytes), 0, dt, n_head_kv * kv_capacity, head_dim, rb};
        const Tensor vt{dev->wrap_host(vc.data(), cache_bytes), 0, dt, n_head_kv * kv_capacity, head_dim, rb};
        {
          nb::gil_scoped_release release;
          int64_t t0 = 0;
          for (int64_t m : chunks) {
            OpCall r{OpCode::kRopeKv};
            r.t[0] = host_tensor(*dev, qw.data() + t0 * qcols, DType::kF32, m, qcols);
            r.t[1] = host_tensor(*dev, kw.data() + t0 * kvcols, DType::kF32, m, kvcols);
            r.t[2] = host_tensor(*dev, vw.data() + t0 * kvcols, DType::kF32, m, kvcols);
            r.t[3] = kt;
            r.t[4] = vt;
            r.t[5] = host_tensor(*dev, freq.data(), DType::kF32, 1, head_dim / 2);
            r.p.n_tokens = m;
            r.p.pos0 = t0;
            r.p.n_head = n_head;
            r.p.n_head_kv = n_head_kv;
            r.p.head_dim = head_dim;
            r.p.kv_capacity = kv_capacity;
            r.p.window = window;
            dev->run(r);
            OpCall a{OpCode::kAttention};
            a.t[0] = r.t[0];
            a.t[1] = kt;
            a.t[2] = vt;
            a.t[3] = host_tensor(*dev, out.data() + t0 * qcols, DType::kF32, m, qcols);
            a.p = r.p;
            a.p.scale = scale;
            a.p.softcap = softcap;
            dev->run(a);
            t0 += m;
          }
        }
        return std::make_tuple(owned_array(std::move(out), {static_cast<size_t>(nt), static_cast<size_t>(qcols)}),
                               owned_array(std::move(kc), {cache_bytes}), owned_array(std::move(vc), {cache_bytes}));
      },
      nb::arg("kv_dtype"), nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("n_head"), nb::arg("n_head_kv"),
      nb::arg("head_dim"), nb::arg("kv_capacity"), nb::arg("window") = 0, nb::arg("scale") = 1.f,
      nb::arg("softcap") = 0.f, nb::arg("chunks") = std::vector<int64_t>{}, nb::arg("threads") = 2,
      nb::arg("split_bytes") = -1,
      "rope_kv (identity rotation) + attention over a KV cache of kv_dtype; returns (out, K cache, V cache). "
      "split_bytes >= 0: K bytes per KV head from which a decode token is split over the threads (-1: the "
      "device's default).");

  k.def(
      "rms_norm",
      [](F32In x, F32In w, float eps, int threads) {
        const auto n = static_cast<int64_t>(w.size());
        check(n > 0 && x.size() % static_cast<size_t>(n) == 0, ErrorCode::kShapeMismatch, "kernels.rms_norm",
              "x: expected a multiple of len(w) values");
        const int64_t nt = static_cast<int64_t>(x.size()) / n;
        auto dev = make_device("cpu", threads, DeviceLimits{});
        std::vector<float> out(x.size());
        OpCall c{OpCode::kRmsNorm};
        c.t[0] = host_tensor(*dev, x.data(), DType::kF32, nt, n);
        c.t[1] = host_tensor(*dev, w.data(), DType::kF32, 1, n);
        c.t[2] = host_tensor(*dev, out.data(), DType::kF32, nt, n);
        c.p.n_tokens = nt;
        c.p.eps = eps;
        dev->run(c);
        return owned_array(std::move(out), {static_cast<size_t>(nt), static_cast<size_t>(n)});
      },
      nb::arg("x"), nb::arg("w"), nb::arg("eps"), nb::arg("threads") = 2);
}

}  // namespace metallic::bindings
