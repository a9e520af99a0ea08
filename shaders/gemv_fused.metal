// Fused RMSNorm + GEMV instantiations, one per weight format (template in gemv_fused.h).
#include "gemv_fused.h"

using namespace metallic;

METALLIC_KERNEL("gemv_norm_f32", gemv_norm, float)
METALLIC_KERNEL("gemv_norm_f16", gemv_norm, half)
METALLIC_KERNEL("gemv_norm_bf16", gemv_norm, Bf16)
METALLIC_KERNEL("gemv_norm_q8_0", gemv_norm, BlockQ8_0)
METALLIC_KERNEL("gemv_norm_q4_0", gemv_norm, BlockQ4_0)
METALLIC_KERNEL("gemv_norm_q4_1", gemv_norm, BlockQ4_1)
METALLIC_KERNEL("gemv_norm_q5_0", gemv_norm, BlockQ5_0)
METALLIC_KERNEL("gemv_norm_q5_1", gemv_norm, BlockQ5_1)
METALLIC_KERNEL("gemv_norm_q4_k", gemv_norm, BlockQ4_K)
METALLIC_KERNEL("gemv_norm_q5_k", gemv_norm, BlockQ5_K)
METALLIC_KERNEL("gemv_norm_q6_k", gemv_norm, BlockQ6_K)

METALLIC_KERNEL("gemv_norm_swiglu_f32", gemv_norm_swiglu, float)
METALLIC_KERNEL("gemv_norm_swiglu_f16", gemv_norm_swiglu, half)
METALLIC_KERNEL("gemv_norm_swiglu_bf16", gemv_norm_swiglu, Bf16)
METALLIC_KERNEL("gemv_norm_swiglu_q8_0", gemv_norm_swiglu, BlockQ8_0)
METALLIC_KERNEL("gemv_norm_swiglu_q4_0", gemv_norm_swiglu, BlockQ4_0)
METALLIC_KERNEL("gemv_norm_swiglu_q4_1", gemv_norm_swiglu, BlockQ4_1)
METALLIC_KERNEL("gemv_norm_swiglu_q5_0", gemv_norm_swiglu, BlockQ5_0)
METALLIC_KERNEL("gemv_norm_swiglu_q5_1", gemv_norm_swiglu, BlockQ5_1)
METALLIC_KERNEL("gemv_norm_swiglu_q4_k", gemv_norm_swiglu, BlockQ4_K)
METALLIC_KERNEL("gemv_norm_swiglu_q5_k", gemv_norm_swiglu, BlockQ5_K)
METALLIC_KERNEL("gemv_norm_swiglu_q6_k", gemv_norm_swiglu, BlockQ6_K)
