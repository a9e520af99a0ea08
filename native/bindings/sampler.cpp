#include "model/sampler.h"

#include <nanobind/ndarray.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/vector.h>

#include "bindings/bindings.h"
#include "core/error.h"

namespace nb = nanobind;

namespace metallic::bindings {

void init_sampler(nb::module_& m) {
  using Vec = nb::ndarray<const float, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
  nb::class_<Sampler>(m, "Sampler")
      .def(
          "__init__",
          [](Sampler* self, int64_t n_vocab, float temperature, int32_t top_k, float top_p, float min_p,
             float repetition_penalty, int32_t repetition_window, uint64_t seed, float presence_penalty,
             float frequency_penalty, std::vector<std::pair<int32_t, float>> logit_bias, int32_t min_tokens,
             std::vector<int32_t> suppress_ids, int32_t top_logprobs) {
            SamplerParams p;
            p.temperature = temperature;
            p.top_k = top_k;
            p.top_p = top_p;
            p.min_p = min_p;
            p.repetition_penalty = repetition_penalty;
            p.repetition_window = repetition_window;
            p.seed = seed;
            p.presence_penalty = presence_penalty;
            p.frequency_penalty = frequency_penalty;
            p.logit_bias = std::move(logit_bias);
            p.min_tokens = min_tokens;
            p.suppress_ids = std::move(suppress_ids);
            p.top_logprobs = top_logprobs;
            new (self) Sampler(n_vocab, p);
          },
          nb::arg("n_vocab"), nb::arg("temperature") = 0.f, nb::arg("top_k") = 0, nb::arg("top_p") = 1.f,
          nb::arg("min_p") = 0.f, nb::arg("repetition_penalty") = 1.f, nb::arg("repetition_window") = 64,
          nb::arg("seed") = 0, nb::kw_only(), nb::arg("presence_penalty") = 0.f, nb::arg("frequency_penalty") = 0.f,
          nb::arg("logit_bias") = std::vector<std::pair<int32_t, float>>{}, nb::arg("min_tokens") = 0,
          nb::arg("suppress_ids") = std::vector<int32_t>{}, nb::arg("top_logprobs") = -1)
      .def(
          "sample",
          [](Sampler& s, Vec logits) {
            if (static_cast<int64_t>(logits.shape(0)) != s.n_vocab())
              fail(ErrorCode::kShapeMismatch, "sampler",
                   "logits: expected " + std::to_string(s.n_vocab()) + " values, got " +
                       std::to_string(logits.shape(0)));
            return s.sample(logits.data());
          },
          nb::arg("logits"), "Draws one token id; logits are not modified.")
      .def("accept", &Sampler::accept, nb::arg("token"), "Pushes a token into the penalty history.")
      .def("reset", &Sampler::reset)
      .def_prop_ro("n_vocab", &Sampler::n_vocab)
      .def_prop_rw("mask_enabled", &Sampler::mask_enabled, &Sampler::set_mask_enabled,
                   "Whether sample() applies the allowed-token bitmask (see `mask`).")
      .def_prop_ro(
          "mask",
          [](Sampler& s) {
            return nb::ndarray<nb::numpy, uint32_t, nb::ndim<1>>(s.mask_words(), {static_cast<size_t>(s.mask_size())},
                                                                 nb::find(&s));
          },
          nb::rv_policy::reference_internal,
          "Writable view of the allowed-token bitmask, ceil(n_vocab / 32) uint32 words: bit i % 32 of word "
          "i / 32 set = token i allowed. Lives as long as the sampler.")
      .def_prop_ro(
          "logprob_values",
          [](Sampler& s) {
            return nb::ndarray<nb::numpy, const float, nb::ndim<1>>(
                s.logprob_values(), {static_cast<size_t>(s.logprob_slots())}, nb::find(&s));
          },
          nb::rv_policy::reference_internal,
          "View, updated by each sample(): [logprob of the drawn token, then the top_logprobs best].")
      .def_prop_ro(
          "logprob_ids",
          [](Sampler& s) {
            return nb::ndarray<nb::numpy, const int32_t, nb::ndim<1>>(
                s.logprob_ids(), {static_cast<size_t>(s.logprob_slots())}, nb::find(&s));
          },
          nb::rv_policy::reference_internal, "View: [drawn token id, then the ids of the top_logprobs best].");
}

}  // namespace metallic::bindings
