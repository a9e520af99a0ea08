// RoPE + KV-write instantiations, one per cache element type (template in rope_kv.h).
#include "rope_kv.h"

using namespace metallic;

METALLIC_KERNEL("rope_kv_f32", rope_kv, float)
METALLIC_KERNEL("rope_kv_f16", rope_kv, half)
