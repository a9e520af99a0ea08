// RMSNorm instantiations (template in rms_norm.h).
#include "rms_norm.h"

using namespace metallic;

METALLIC_KERNEL("rms_norm_f32", rms_norm, float)
METALLIC_KERNEL("rms_norm_f16", rms_norm, half)
