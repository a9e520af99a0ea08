// Prefill GEMM instantiations, one per weight format (template in gemm.h, formats in quant.h).
#include "gemm.h"

using namespace metallic;

METALLIC_KERNEL("gemm_f32", gemm, float)
METALLIC_KERNEL("gemm_f16", gemm, half)
METALLIC_KERNEL("gemm_bf16", gemm, Bf16)
METALLIC_KERNEL("gemm_q8_0", gemm, BlockQ8_0)
METALLIC_KERNEL("gemm_q4_0", gemm, BlockQ4_0)
METALLIC_KERNEL("gemm_q4_1", gemm, BlockQ4_1)
METALLIC_KERNEL("gemm_q5_0", gemm, BlockQ5_0)
METALLIC_KERNEL("gemm_q5_1", gemm, BlockQ5_1)
METALLIC_KERNEL("gemm_q4_k", gemm, BlockQ4_K)
METALLIC_KERNEL("gemm_q5_k", gemm, BlockQ5_K)
METALLIC_KERNEL("gemm_q6_k", gemm, BlockQ6_K)
