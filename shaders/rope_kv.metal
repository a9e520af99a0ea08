// RoPE + KV-write instantiations, one per cache element type (templates in rope_kv.h).
#include "rope_kv.h"

using namespace metallic;

METALLIC_KERNEL("rope_kv_f32", rope_kv, float)
METALLIC_KERNEL("rope_kv_f16", rope_kv, half)
METALLIC_KERNEL("rope_kv_q8_0", rope_kv_q, BlockQ8_0)
METALLIC_KERNEL("rope_kv_q4_0", rope_kv_q, BlockQ4_0)
