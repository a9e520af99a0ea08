#include "bindings/bindings.h"

NB_MODULE(_core, m) {
  m.doc() = "metallic native core: devices, kernels and the decoder plan";
  metallic::bindings::init_errors(m);
  metallic::bindings::init_sampler(m);
  metallic::bindings::init_engine(m);
  metallic::bindings::init_kernels(m);
  metallic::bindings::init_tokenizer(m);
  // Which Metal device this build has: "apple" (the Metal framework), "linux-runtime" (the same
  // device on the Linux Metal runtime, tests only: -DMETALLIC_METAL_ON_LINUX=ON) or "none".
#if defined(METALLIC_METAL_ON_LINUX)
  m.attr("metal_build") = "linux-runtime";
#elif defined(METALLIC_HAVE_METAL)
  m.attr("metal_build") = "apple";
#else
  m.attr("metal_build") = "none";
#endif
}
