// Decode-attention instantiations, one per cache element type (template in attention_decode.h).
#include "attention_decode.h"

using namespace metallic;

METALLIC_KERNEL("attention_decode_f32", attention_decode, float)
METALLIC_KERNEL("attention_decode_f16", attention_decode, half)
