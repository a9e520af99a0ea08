// Prefill flash-attention instantiations, one per cache element type (template in flash_attn.h).
#include "flash_attn.h"

using namespace metallic;

METALLIC_KERNEL("flash_attn_f32", flash_attn, float)
METALLIC_KERNEL("flash_attn_f16", flash_attn, half)
