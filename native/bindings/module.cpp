#include "bindings/bindings.h"

NB_MODULE(_core, m) {
  m.doc() = "metallic native core: devices, kernels and the decoder plan";
  metallic::bindings::init_errors(m);
  metallic::bindings::init_sampler(m);
  metallic::bindings::init_engine(m);
  metallic::bindings::init_kernels(m);
}
