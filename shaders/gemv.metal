// GEMV instantiations, one per weight format (template in gemv.h, formats in quant.h).
#include "gemv.h"

using namespace metallic;

METALLIC_KERNEL("gemv_f32", gemv, float)
METALLIC_KERNEL("gemv_f16", gemv, half)
METALLIC_KERNEL("gemv_bf16", gemv, Bf16)
METALLIC_KERNEL("gemv_q8_0", gemv, BlockQ8_0)
METALLIC_KERNEL("gemv_q4_0", gemv, BlockQ4_0)
METALLIC_KERNEL("gemv_q4_1", gemv, BlockQ4_1)
METALLIC_KERNEL("gemv_q5_0", gemv, BlockQ5_0)
METALLIC_KERNEL("gemv_q5_1", gemv, BlockQ5_1)
METALLIC_KERNEL("gemv_q4_k", gemv, BlockQ4_K)
METALLIC_KERNEL("gemv_q5_k", gemv, BlockQ5_K)
METALLIC_KERNEL("gemv_q6_k", gemv, BlockQ6_K)
