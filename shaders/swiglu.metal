// SwiGLU instantiations (template in swiglu.h).
#include "swiglu.h"

using namespace metallic;

METALLIC_KERNEL("swiglu_f32", swiglu, float)
