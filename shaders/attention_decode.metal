// Decode-attention instantiations, one per cache element type: float, half, Q8_0 and Q4_0 blocks
// (template in attention_decode.h).
#include "attention_decode.h"

using namespace metallic;

METALLIC_KERNEL("attention_decode_f32", attention_decode, float)
METALLIC_KERNEL("attention_decode_f16", attention_decode, half)
METALLIC_KERNEL("attention_decode_q8_0", attention_decode, BlockQ8_0)
METALLIC_KERNEL("attention_decode_q4_0", attention_decode, BlockQ4_0)
