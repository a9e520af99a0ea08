"""Independent NumPy dequantizers and the engine's int8 activation quantization (part of the
reference, re-exported by ``tests/reference.py``).

Each dequantizer takes the raw bytes of whole blocks and states the block layout it decodes; the
layouts are checked against ``gguf.quants`` and hand-built blocks in ``test_reference.py``.
"""

from __future__ import annotations

import numpy as np

QK = 32  # elements per block of every 32-block type (Q8_0, Q4_0, Q4_1 and the int8 activations)
# storage dtypes whose matmuls quantize activations
QUANTIZED = frozenset({"q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k", "q5_k", "q6_k"})

# ----------------------------------------------------------------------------- dequantizers
# Each takes the raw bytes of whole blocks (uint8, any shape whose last axis holds complete
# blocks of a row) and returns float32 values, shape (..., elements per row).


def _blocks(raw: np.ndarray, block_bytes: int) -> np.ndarray:
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    return raw.reshape(*raw.shape[:-1], raw.shape[-1] // block_bytes, block_bytes)


def _f16(two_bytes: np.ndarray) -> np.ndarray:
    """(..., 2) little-endian bytes -> float32 (...) through float16."""
    return np.ascontiguousarray(two_bytes).view("<f2")[..., 0].astype(np.float32)


def _merge_blocks(vals: np.ndarray) -> np.ndarray:
    """(..., n_blocks, 32) -> (..., n_blocks * 32)."""
    return vals.reshape(*vals.shape[:-2], vals.shape[-2] * vals.shape[-1])


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(..., 16) packed bytes -> (..., 32): low nibbles are elements 0..15, high 16..31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.float32)


def dequant_q8_0(raw: np.ndarray) -> np.ndarray:
    """Q8_0 block (34 bytes): f16 d, 32 x int8 q. Value q * d."""
    b = _blocks(raw, 34)
    d = _f16(b[..., 0:2])
    q = b[..., 2:34].view(np.int8).astype(np.float32)
    return _merge_blocks(q * d[..., None])


def dequant_q4_0(raw: np.ndarray) -> np.ndarray:
    """Q4_0 block (18 bytes): f16 d, 16 bytes of nibbles. Value (q - 8) * d."""
    b = _blocks(raw, 18)
    d = _f16(b[..., 0:2])
    return _merge_blocks((_nibbles(b[..., 2:18]) - 8.0) * d[..., None])


def dequant_q4_1(raw: np.ndarray) -> np.ndarray:
    """Q4_1 block (20 bytes): f16 d, f16 m, 16 bytes of nibbles. Value q * d + m."""
    b = _blocks(raw, 20)
    d = _f16(b[..., 0:2])
    m = _f16(b[..., 2:4])
    return _merge_blocks(_nibbles(b[..., 4:20]) * d[..., None] + m[..., None])


def _q5_codes(qh: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """(..., 4) little-endian uint32 high bits, (..., 16) nibbles -> (..., 32) 5-bit codes."""
    bits = (np.ascontiguousarray(qh).view("<u4") >> np.arange(32, dtype=np.uint32)) & 1
    return _nibbles(qs) + 16.0 * bits.astype(np.float32)


def dequant_q5_0(raw: np.ndarray) -> np.ndarray:
    """Q5_0 block (22 bytes): f16 d, 4 bytes of fifth bits, 16 bytes of nibbles. (q - 16) * d."""
    b = _blocks(raw, 22)
    return _merge_blocks(
        (_q5_codes(b[..., 2:6], b[..., 6:22]) - 16.0) * _f16(b[..., 0:2])[..., None]
    )


def dequant_q5_1(raw: np.ndarray) -> np.ndarray:
    """Q5_1 block (24 bytes): f16 d, f16 m, 4 bytes of fifth bits, 16 bytes of nibbles. q*d + m."""
    b = _blocks(raw, 24)
    q = _q5_codes(b[..., 4:8], b[..., 8:24])
    return _merge_blocks(q * _f16(b[..., 0:2])[..., None] + _f16(b[..., 2:4])[..., None])


def _k4_scales(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., 12) packed Q4_K/Q5_K scales -> 6-bit (sc, m), each (..., 8) float32."""
    sc = np.concatenate([s[..., 0:4] & 63, (s[..., 8:12] & 15) | (s[..., 0:4] >> 6 << 4)], -1)
    m = np.concatenate([s[..., 4:8] & 63, (s[..., 8:12] >> 4) | (s[..., 4:8] >> 6 << 4)], -1)
    return sc.astype(np.float32), m.astype(np.float32)


def _dequant_k45(raw: np.ndarray, block_bytes: int) -> np.ndarray:
    """Q4_K (144 bytes) / Q5_K (176): f16 d, f16 dmin, 12 bytes of 6-bit scales and mins, [32 bytes
    of fifth bits,] 128 bytes of nibbles. Sub-block j (32 values): d*sc[j]*q - dmin*m[j], where
    q's low 4 bits are byte 32*(j//2)+l's low (j even) or high (j odd) nibble and its fifth bit
    is bit j of qh[l]."""
    b = _blocks(raw, block_bytes)
    sc, m = _k4_scales(b[..., 4:16])
    qs = b[..., -128:].reshape(*b.shape[:-1], 4, 1, 32) >> np.array([[0], [4]], np.uint8)
    q = (qs & 15).reshape(*b.shape[:-1], 8, 32).astype(np.float32)
    if block_bytes == 176:
        q += 16.0 * ((b[..., None, 16:48] >> np.arange(8, dtype=np.uint8)[:, None]) & 1)
    d, dmin = _f16(b[..., 0:2])[..., None], _f16(b[..., 2:4])[..., None]
    return _merge_blocks(_merge_blocks((d * sc)[..., None] * q - (dmin * m)[..., None]))


def dequant_q6_k(raw: np.ndarray) -> np.ndarray:
    """Q6_K block (210 bytes): 128 bytes low nibbles, 64 bytes of 2-bit highs, 16 int8 scales,
    f16 d. Value 128h+32t+l: low nibble of ql[64h+32(t%2)+l] >> 4(t//2), high bits
    qh[32h+l] >> 2t; value = d * scales[v//16] * (q - 32)."""
    b = _blocks(raw, 210)
    lead = b.shape[:-1]
    ql = b[..., 0:128].reshape(*lead, 2, 1, 2, 32) >> np.array([[[0]], [[4]]], np.uint8)
    low = (ql & 15).reshape(*lead, 2, 4, 32)  # (half, t, l)
    high = (
        b[..., 128:192].reshape(*lead, 2, 1, 32) >> (2 * np.arange(4, dtype=np.uint8))[:, None]
    ) & 3
    q = (low | (high << 4)).astype(np.float32).reshape(*lead, 16, 16) - 32.0
    scale = _f16(b[..., 208:210])[..., None] * b[..., 192:208].view(np.int8).astype(np.float32)
    return _merge_blocks(_merge_blocks(scale[..., None] * q))


def dequant_f16(raw: np.ndarray) -> np.ndarray:
    """IEEE half, little endian."""
    return np.ascontiguousarray(raw, dtype=np.uint8).view("<f2").astype(np.float32)


def dequant_bf16(raw: np.ndarray) -> np.ndarray:
    """bfloat16 = the top 16 bits of a float32."""
    bits = np.ascontiguousarray(raw, dtype=np.uint8).view("<u2").astype(np.uint32)
    return (bits << 16).view(np.float32)


def dequant_f32(raw: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(raw, dtype=np.uint8).view("<f4").copy()


DEQUANT = {
    "f32": dequant_f32,
    "f16": dequant_f16,
    "bf16": dequant_bf16,
    "q8_0": dequant_q8_0,
    "q4_0": dequant_q4_0,
    "q4_1": dequant_q4_1,
    "q5_0": dequant_q5_0,
    "q5_1": dequant_q5_1,
    "q4_k": lambda raw: _dequant_k45(raw, 144),
    "q5_k": lambda raw: _dequant_k45(raw, 176),
    "q6_k": dequant_q6_k,
}


def dequantize(raw: np.ndarray, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Raw tensor bytes of storage ``dtype`` -> float32 array of numpy-order ``shape``."""
    flat = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1)
    return DEQUANT[dtype](flat).reshape(shape)


# ----------------------------------------------------------------------------- int8 activations


def quantize_act_q8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quantize activations per block of 32, as the engine does before a quantized matmul.

    Args:
        x: (..., K) activations, K a multiple of 32; converted to float32 first (the engine's
           activations are float32).
    Returns:
        q: (..., K) int8 in [-127, 127], q = rint(x * (127 / amax)) in float32, half to even.
        d: (..., K / 32) float32 scales, d = amax / 127; an all-zero block has d = 0, q = 0.
    """
    x = np.asarray(x, dtype=np.float32)
    xb = x.reshape(*x.shape[:-1], x.shape[-1] // QK, QK)
    amax = np.abs(xb).max(axis=-1)
    d = amax / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    q = np.rint(xb * inv[..., None])  # float32 product, round half to even
    q = np.clip(q, -127, 127).astype(np.int8)
    return q.reshape(x.shape), d.astype(np.float32)


def dequant_act(q: np.ndarray, d: np.ndarray) -> np.ndarray:
    """(q, d) from :func:`quantize_act_q8` -> float64 q * d (exact: 8-bit times 24-bit)."""
    qb = q.astype(np.float64).reshape(*q.shape[:-1], q.shape[-1] // QK, QK)
    return (qb * d.astype(np.float64)[..., None]).reshape(q.shape)
