#include "model/sampler.h"

#include <nanobind/ndarray.h>

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
             float repetition_penalty, int32_t repetition_window, uint64_t seed) {
            SamplerParams p;
            p.temperature = temperature;
            p.top_k = top_k;
            p.top_p = top_p;
            p.min_p = min_p;
            p.repetition_penalty = repetition_penalty;
            p.repetition_window = repetition_window;
            p.seed = seed;
            new (self) Sampler(n_vocab, p);
          },
          nb::arg("n_vocab"), nb::arg("temperature") = 0.f, nb::arg("top_k") = 0, nb::arg("top_p") = 1.f,
          nb::arg("min_p") = 0.f, nb::arg("repetition_penalty") = 1.f, nb::arg("repetition_window") = 64,
          nb::arg("seed") = 0)
      .def(
          "sample",
          [](Sampler& s, Vec logits) {
            check(
                static_cast<int64_t>(logits.shape(0)) == s.n_vocab(), ErrorCode::kShapeMismatch, "sampler",
                "logits: expected " + std::to_string(s.n_vocab()) + " values, got " + std::to_string(logits.shape(0)));
            return s.sample(logits.data());
          },
          nb::arg("logits"), "Draws one token id; logits are not modified.")
      .def("accept", &Sampler::accept, nb::arg("token"), "Pushes a token into the repetition-penalty history.")
      .def("reset", &Sampler::reset)
      .def_prop_ro("n_vocab", &Sampler::n_vocab);
}

}  // namespace metallic::bindings
