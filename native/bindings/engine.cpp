// Engine, ModelConfig and Weight bindings. Weight arrays are held (not copied) for the engine's
// lifetime; compute releases the GIL.
#include "model/engine.h"

#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/unordered_map.h>
#include <nanobind/stl/vector.h>

#include <array>
#include <climits>
#include <exception>
#include <memory>
#include <optional>
#include <string>

#include "bindings/bindings.h"
#include "bindings/sigint.h"

namespace nb = nanobind;

namespace metallic::bindings {

namespace {

using Bytes = nb::ndarray<const uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using Tokens = nb::ndarray<const int32_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using Logits2D = nb::ndarray<float, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using Logits2DIn = nb::ndarray<const float, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using Segments = nb::ndarray<const int64_t, nb::ndim<2>, nb::c_contig, nb::device::cpu>;

struct PyWeight {
  int dtype;
  std::vector<int64_t> shape;
  Bytes data;
};

// Owns the engine and the Python arrays its weights point into.
struct PyEngine {
  std::unique_ptr<Engine> engine;
  std::vector<Bytes> keep_alive;

  Engine& get(const char* where) {
    check(engine && !engine->closed(), ErrorCode::kClosed, where, "the model was closed");
    return *engine;
  }
};

}  // namespace

void init_engine(nb::module_& m) {
  nb::enum_<DType>(m, "DType")
      .value("F32", DType::kF32)
      .value("F16", DType::kF16)
      .value("BF16", DType::kBF16)
      .value("Q8_0", DType::kQ8_0)
      .value("Q4_0", DType::kQ4_0)
      .value("Q4_1", DType::kQ4_1)
      .value("Q5_0", DType::kQ5_0)
      .value("Q5_1", DType::kQ5_1)
      .value("Q4_K", DType::kQ4_K)
      .value("Q5_K", DType::kQ5_K)
      .value("Q6_K", DType::kQ6_K);
  nb::enum_<Activation>(m, "Activation").value("SILU", Activation::kSilu).value("GELU_TANH", Activation::kGeluTanh);

  nb::class_<ModelConfig>(m, "ModelConfig")
      .def(nb::init<>())
      .def_rw("n_vocab", &ModelConfig::n_vocab)
      .def_rw("n_embd", &ModelConfig::n_embd)
      .def_rw("n_layer", &ModelConfig::n_layer)
      .def_rw("n_head", &ModelConfig::n_head)
      .def_rw("n_head_kv", &ModelConfig::n_head_kv)
      .def_rw("head_dim", &ModelConfig::head_dim)
      .def_rw("n_ff", &ModelConfig::n_ff)
      .def_rw("rms_eps", &ModelConfig::rms_eps)
      .def_rw("rope_neox", &ModelConfig::rope_neox)
      .def_rw("rope_inv_freq", &ModelConfig::rope_inv_freq)
      .def_rw("attn_scale", &ModelConfig::attn_scale)
      .def_rw("qkv_bias", &ModelConfig::qkv_bias)
      .def_rw("tied_embeddings", &ModelConfig::tied_embeddings)
      .def_rw("activation", &ModelConfig::activation)
      .def_rw("embed_scale", &ModelConfig::embed_scale)
      .def_rw("qk_norm", &ModelConfig::qk_norm)
      .def_rw("post_norms", &ModelConfig::post_norms)
      .def_rw("norm_weight_offset", &ModelConfig::norm_weight_offset)
      .def_rw("layer_window", &ModelConfig::layer_window)
      .def_rw("rope_inv_freq_local", &ModelConfig::rope_inv_freq_local)
      .def_rw("attn_softcap", &ModelConfig::attn_softcap)
      .def_rw("final_softcap", &ModelConfig::final_softcap)
      .def_rw("rope_dim", &ModelConfig::rope_dim)
      .def_rw("rope_mscale", &ModelConfig::rope_mscale);

  nb::class_<PyWeight>(m, "Weight")
      .def(nb::init<int, std::vector<int64_t>, Bytes>(), nb::arg("dtype"), nb::arg("shape"), nb::arg("data"),
           "A weight view: GGML type id, numpy-order shape, uint8 bytes (kept alive, not copied).")
      .def_ro("dtype", &PyWeight::dtype)
      .def_ro("shape", &PyWeight::shape);

  nb::class_<PyEngine>(m, "Engine")
      .def(
          "__init__",
          [](PyEngine* self, const ModelConfig& cfg, const std::unordered_map<std::string, PyWeight>& weights,
             const std::string& device, int threads, int64_t context_length, int kv_dtype, bool weights_evictable,
             int64_t batch_size, int64_t n_seq) {
            new (self) PyEngine();
            WeightMap wm;
            wm.reserve(weights.size());
            for (const auto& [name, w] : weights) {
              WeightSpec s;
              s.dtype = dtype_from_int(w.dtype, "tensor " + name);
              s.shape = w.shape;
              s.data = w.data.data();
              s.nbytes = w.data.shape(0);
              wm.emplace(name, std::move(s));
              self->keep_alive.push_back(w.data);
            }
            const DType kv = dtype_from_int(kv_dtype, "kv_dtype");
            nb::gil_scoped_release release;
            self->engine = std::make_unique<Engine>(cfg, wm, device, threads, context_length, kv, weights_evictable,
                                                    batch_size, n_seq);
          },
          nb::arg("config"), nb::arg("weights"), nb::arg("device") = "cpu", nb::arg("threads") = 0,
          nb::arg("context_length") = 4096, nb::arg("kv_dtype") = static_cast<int>(DType::kF16),
          nb::arg("weights_evictable") = false, nb::arg("batch_size") = Engine::kDefaultBatch, nb::arg("n_seq") = 1)
      .def(
          "forward",
          [](PyEngine& self, Tokens tokens, int64_t start_pos, Logits2D logits_out, bool all_logits) {
            Engine& e = self.get("engine.forward");
            const int64_t n = static_cast<int64_t>(tokens.shape(0));
            const int64_t want = all_logits ? n : 1;
            if (static_cast<int64_t>(logits_out.shape(0)) != want ||
                static_cast<int64_t>(logits_out.shape(1)) != e.n_vocab())
              fail(ErrorCode::kShapeMismatch, "engine.forward",
                   "logits_out: expected " + std::to_string(want) + "x" + std::to_string(e.n_vocab()) + ", got " +
                       std::to_string(logits_out.shape(0)) + "x" + std::to_string(logits_out.shape(1)));
            nb::gil_scoped_release release;
            SigintCancel ctrl_c(e);
            e.forward(tokens.data(), n, start_pos, logits_out.data(), all_logits);
          },
          nb::arg("tokens"), nb::arg("start_pos"), nb::arg("logits_out"), nb::arg("all_logits"))
      .def(
          "decode",
          [](PyEngine& self, int32_t token, int64_t pos, Sampler& sampler) {
            Engine& e = self.get("engine.decode");
            nb::gil_scoped_release release;
            SigintCancel ctrl_c(e);
            return e.decode(token, pos, sampler);
          },
          nb::arg("token"), nb::arg("pos"), nb::arg("sampler"))
      .def(
          "forward_batch",
          [](PyEngine& self, Tokens tokens, Segments segs, std::optional<Logits2D> logits_out) {
            Engine& e = self.get("engine.forward_batch");
            const int64_t k = static_cast<int64_t>(segs.shape(0));
            if (segs.shape(1) != 4)
              fail(ErrorCode::kShapeMismatch, "engine.forward_batch",
                   "segments: expected k x 4 (slot, n, pos0, logits), got " + std::to_string(segs.shape(0)) + "x" +
                       std::to_string(segs.shape(1)));
            if (k < 1 || k > e.n_seq())
              fail(ErrorCode::kInvalidArgument, "engine.forward_batch",
                   "segments: expected 1.." + std::to_string(e.n_seq()) + " rows, got " + std::to_string(k));
            if (logits_out && static_cast<int64_t>(logits_out->shape(1)) != e.n_vocab())
              fail(ErrorCode::kShapeMismatch, "engine.forward_batch",
                   "logits_out: expected rows x " + std::to_string(e.n_vocab()) + ", got " +
                       std::to_string(logits_out->shape(0)) + "x" + std::to_string(logits_out->shape(1)));
            std::array<Engine::Segment, Engine::kMaxSeq> seg{};
            const int64_t* v = segs.data();
            for (int64_t i = 0; i < k; ++i) {
              const int64_t slot = v[4 * i], n = v[4 * i + 1], lg = v[4 * i + 3];
              if (slot < 0 || slot > INT32_MAX || n < 1 || n > INT32_MAX || lg < 0 || lg > n)
                fail(ErrorCode::kInvalidArgument, "engine.forward_batch",
                     "segment " + std::to_string(i) + ": slot, n or logits out of range: " + std::to_string(slot) +
                         ", " + std::to_string(n) + ", " + std::to_string(lg));
              seg[static_cast<size_t>(i)] = Engine::Segment{static_cast<int32_t>(slot), static_cast<int32_t>(n),
                                                            v[4 * i + 2], static_cast<int32_t>(lg)};
            }
            float* out = logits_out ? logits_out->data() : nullptr;
            const int64_t rows = logits_out ? static_cast<int64_t>(logits_out->shape(0)) : 0;
            nb::gil_scoped_release release;
            return e.forward_batch(tokens.data(), static_cast<int64_t>(tokens.shape(0)), seg.data(), k, out, rows);
          },
          nb::arg("tokens"), nb::arg("segments"), nb::arg("logits_out") = nb::none(),
          "Runs a ragged batch: segments (k, 4) int64 rows (slot, n, pos0, logits) take the next n tokens each; "
          "the last `logits` tokens of each get a logits row, in order, in logits_out (rows, n_vocab) when given, "
          "else in batch_logits(). Returns the number of rows written.")
      .def(
          "batch_logits",
          [](PyEngine& self) {
            Engine& e = self.get("engine.batch_logits");
            return nb::ndarray<nb::numpy, const float, nb::ndim<2>>(
                e.batch_logits(), {static_cast<size_t>(e.n_seq()), static_cast<size_t>(e.n_vocab())}, nb::find(&self));
          },
          nb::rv_policy::reference_internal,
          "View (n_seq, n_vocab) of forward_batch's logits rows (valid until the next call).")
      .def(
          "sample_rows",
          [](PyEngine& self, const std::vector<Sampler*>& samplers, Logits2DIn logits,
             const std::vector<int64_t>& rows) {
            Engine& e = self.get("engine.sample_rows");
            const auto k = static_cast<int64_t>(samplers.size());
            if (static_cast<int64_t>(rows.size()) != k || k > Engine::kMaxSeq)
              fail(ErrorCode::kInvalidArgument, "engine.sample_rows",
                   "rows: expected one per sampler (at most " + std::to_string(Engine::kMaxSeq) + "), got " +
                       std::to_string(rows.size()) + " for " + std::to_string(k));
            if (static_cast<int64_t>(logits.shape(1)) != e.n_vocab())
              fail(ErrorCode::kShapeMismatch, "engine.sample_rows",
                   "logits: expected rows x " + std::to_string(e.n_vocab()) + ", got " +
                       std::to_string(logits.shape(0)) + "x" + std::to_string(logits.shape(1)));
            std::array<int32_t, Engine::kMaxSeq> out{};
            std::array<std::exception_ptr, Engine::kMaxSeq> errs{};
            {
              nb::gil_scoped_release release;
              e.sample_rows(samplers.data(), logits.data(), static_cast<int64_t>(logits.shape(0)), rows.data(), k,
                            out.data(), errs.data());
            }
            nb::list result;  // a token id, or the error (not raised) of a draw that failed
            for (size_t i = 0; i < static_cast<size_t>(k); ++i) {
              if (errs[i]) {
                result.append(typed_error(errs[i]));
              } else {
                result.append(out[i]);
              }
            }
            return result;
          },
          nb::arg("samplers"), nb::arg("logits"), nb::arg("rows"),
          "Draws with samplers[i] from logits[rows[i]] for every i, in parallel on the device's host threads; "
          "returns a list of token ids, with the MetallicError (not raised) where a draw failed.")
      .def(
          "copy_seq",
          [](PyEngine& self, int32_t src, int32_t dst, int64_t n) {
            Engine& e = self.get("engine.copy_seq");
            nb::gil_scoped_release release;
            e.copy_seq(src, dst, n);
          },
          nb::arg("src"), nb::arg("dst"), nb::arg("n_tokens"),
          "Slot dst's KV of positions [0, n_tokens) becomes a copy of slot src's (prefix reuse).")
      .def_prop_ro("n_seq", [](PyEngine& self) { return self.get("engine").n_seq(); })
      .def_prop_ro("batch_size", [](PyEngine& self) { return self.get("engine").batch_size(); })
      .def(
          "last_logits",
          [](PyEngine& self) {
            Engine& e = self.get("engine.last_logits");
            return nb::ndarray<nb::numpy, const float, nb::ndim<1>>(e.last_logits(), {static_cast<size_t>(e.n_vocab())},
                                                                    nb::find(&self));
          },
          nb::rv_policy::reference_internal, "View of the last position's logits (valid until the next call).")
      .def(
          "kv_bytes", [](PyEngine& self, int64_t n) { return self.get("engine.kv_bytes").kv_bytes(n); },
          nb::arg("n_tokens"),
          "Bytes of KV cache rows of the first n_tokens positions (read_kv / write_kv; a sliding-window "
          "layer holds only its last window positions).")
      .def_prop_ro(
          "kv_cache_bytes", [](PyEngine& self) { return self.get("engine.kv_cache_bytes").kv_cache_bytes(); },
          "Bytes allocated for the KV cache (sliding-window layers: rings of window + batch_size rows).")
      .def(
          "kv_reusable",
          [](PyEngine& self, int64_t n, int32_t slot) { return self.get("engine.kv_reusable").kv_reusable(n, slot); },
          nb::arg("n_tokens"), nb::arg("slot") = 0,
          "True when the KV cache holds every row a forward at start_pos n_tokens needs (sliding-window "
          "rings keep only their last rows); else recompute from position 0.")
      .def(
          "read_kv",
          [](PyEngine& self, int64_t n, nb::ndarray<uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu> out) {
            Engine& e = self.get("engine.read_kv");
            nb::gil_scoped_release release;
            e.read_kv(n, out.data(), out.shape(0));
          },
          nb::arg("n_tokens"), nb::arg("out"), "Copies the KV rows of positions [0, n_tokens) into out (uint8).")
      .def(
          "write_kv",
          [](PyEngine& self, int64_t n, Bytes data) {
            Engine& e = self.get("engine.write_kv");
            nb::gil_scoped_release release;
            e.write_kv(n, data.data(), data.shape(0));
          },
          nb::arg("n_tokens"), nb::arg("data"), "Overwrites the KV rows of positions [0, n_tokens) from data.")
      .def_prop_ro("kv_dtype", [](PyEngine& self) { return static_cast<int>(self.get("engine").kv_dtype()); })
      .def("cancel",
           [](PyEngine& self) {
             if (self.engine) self.engine->cancel();
           })
      .def("close",
           [](PyEngine& self) {
             if (self.engine) self.engine->close();
             self.keep_alive.clear();
           })
      .def_prop_ro("closed", [](PyEngine& self) { return !self.engine || self.engine->closed(); })
      .def_prop_ro("context_length", [](PyEngine& self) { return self.get("engine").context_length(); })
      .def_prop_ro("n_vocab", [](PyEngine& self) { return self.get("engine").n_vocab(); })
      .def_prop_ro("device", [](PyEngine& self) { return std::string(self.get("engine").device_name()); })
      .def(
          "stats",
          [](PyEngine& self) {
            Engine& e = self.get("engine.stats");
            const DeviceCounters total = e.device_counters();
            const Engine::Stats& s = e.stats();
            nb::dict d;
            d["dispatches"] = total.dispatches;
            d["bytes_bound"] = total.bytes_bound;
            d["n_layer"] = e.n_layer();
            d["last_tokens"] = s.last_tokens;
            d["last_layer_dispatches"] = s.last_layer_dispatches;
            d["last_layer_bytes"] = s.last_layer_bytes;
            return d;
          },
          "Device work: total dispatches (cpu: ops run) and bytes bound since load, and for the "
          "transformer layers of the last forward batch (last_tokens tokens).");
}

}  // namespace metallic::bindings
