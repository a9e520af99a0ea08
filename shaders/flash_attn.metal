// Prefill flash-attention instantiations, one per cache element type: float, half, Q8_0 and Q4_0
// blocks (template in flash_attn.h).
#include "flash_attn.h"

using namespace metallic;

METALLIC_KERNEL("flash_attn_f32", flash_attn, float)
METALLIC_KERNEL("flash_attn_f16", flash_attn, half)
METALLIC_KERNEL("flash_attn_q8_0", flash_attn, BlockQ8_0)
METALLIC_KERNEL("flash_attn_q4_0", flash_attn, BlockQ4_0)
