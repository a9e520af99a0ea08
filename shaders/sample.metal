// Device sampling instantiations (templates and the grid contract in sample.h).
#include "sample.h"

using namespace metallic;

METALLIC_KERNEL("argmax_partial_f32", argmax_partial, float)
METALLIC_KERNEL("argmax_final_f32", argmax_final, float)
METALLIC_KERNEL("sample_partial_f32", sample_partial, float)
METALLIC_KERNEL("sample_sums_f32", sample_sums, float)
METALLIC_KERNEL("sample_final_f32", sample_final, float)
