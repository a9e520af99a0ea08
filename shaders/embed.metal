// Embedding-lookup instantiations, one per table format (template in embed.h).
#include "embed.h"

using namespace metallic;

METALLIC_KERNEL("embed_f32", embed, float)
METALLIC_KERNEL("embed_f16", embed, half)
METALLIC_KERNEL("embed_bf16", embed, Bf16)
METALLIC_KERNEL("embed_q8_0", embed, BlockQ8_0)
METALLIC_KERNEL("embed_q4_0", embed, BlockQ4_0)
METALLIC_KERNEL("embed_q4_1", embed, BlockQ4_1)
METALLIC_KERNEL("embed_q5_0", embed, BlockQ5_0)
METALLIC_KERNEL("embed_q5_1", embed, BlockQ5_1)
METALLIC_KERNEL("embed_q4_k", embed, BlockQ4_K)
METALLIC_KERNEL("embed_q5_k", embed, BlockQ5_K)
METALLIC_KERNEL("embed_q6_k", embed, BlockQ6_K)
