// Softmax instantiations (template in softmax.h).
#include "softmax.h"

using namespace metallic;

METALLIC_KERNEL("softmax_f32", softmax, float)
