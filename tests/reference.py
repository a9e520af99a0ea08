"""Independent NumPy reference for the ``llama`` and ``qwen2`` decoder families (HF convention).

Written for clarity, not speed: every op is a few lines of plain NumPy and the forward pass reads
top to bottom like the model card. The engine's kernels and whole-model outputs are checked
against it.

Conventions
-----------
* Weights use HF names (``model.layers.N.self_attn.q_proj.weight`` ...) and HF layouts: q/k rows
  are *not* permuted and RoPE pairs element ``i`` with ``i + head_dim/2`` ("rotate halves").
* ``cfg`` is an HF ``config.json`` dict (``hidden_size``, ``num_attention_heads``,
  ``num_key_value_heads``, ``head_dim`` (optional), ``rms_norm_eps``, ``rope_theta``,
  ``rope_scaling`` (optional)). q/k/v biases are used when present in ``weights`` (qwen2); the
  head is ``lm_head.weight`` when present, else the tied ``model.embed_tokens.weight``.
* Math runs in float64 by default. The reference stands for the exact result, so its own rounding
  (~1e-16) vanishes next to the engine's float32 rounding (~6e-8 per op) and every measured
  difference is the engine's. ``dtype=np.float32`` exists to measure that float32 noise floor.
* The engine's two deliberate precision trades are reproduced exactly when asked for:
  ``act_quant`` (int8 activations for matmuls whose weight is stored in a block type) and
  ``kv_f16`` (K after RoPE and V rounded to float16 when written to the cache).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

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


# ----------------------------------------------------------------------------- RoPE frequencies


def rope_inv_freq(head_dim: int, theta: float) -> np.ndarray:
    """(head_dim/2,) float64: theta ** (-2i / head_dim)."""
    return 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)


def llama3_inv_freq(
    inv_freq: np.ndarray,
    factor: float,
    low_freq_factor: float,
    high_freq_factor: float,
    original_max_position_embeddings: int,
) -> np.ndarray:
    """Llama 3 rope scaling: long wavelengths slowed by ``factor``, short ones kept, a smooth
    blend in between (wavelength measured against the original context)."""
    old_ctx = float(original_max_position_embeddings)
    low_wavelen = old_ctx / low_freq_factor  # longer than this: fully scaled
    high_wavelen = old_ctx / high_freq_factor  # shorter than this: unchanged
    out = np.empty_like(inv_freq, dtype=np.float64)
    for i, f in enumerate(inv_freq):
        wavelen = 2.0 * math.pi / f
        if wavelen < high_wavelen:
            out[i] = f
        elif wavelen > low_wavelen:
            out[i] = f / factor
        else:
            smooth = (old_ctx / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            out[i] = (1.0 - smooth) * f / factor + smooth * f
    return out


def inv_freq_from_config(cfg: Mapping) -> np.ndarray:
    """The (head_dim/2,) inverse frequencies after any ``rope_scaling`` in an HF config."""
    head_dim = head_dim_of(cfg)
    base = rope_inv_freq(head_dim, float(cfg.get("rope_theta", 10000.0)))
    scaling = cfg.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return base
    if kind == "linear":
        return base / float(scaling["factor"])
    if kind == "llama3":
        return llama3_inv_freq(
            base,
            float(scaling["factor"]),
            float(scaling["low_freq_factor"]),
            float(scaling["high_freq_factor"]),
            int(scaling["original_max_position_embeddings"]),
        )
    raise ValueError(f"reference: unsupported rope_scaling {kind!r}")


def head_dim_of(cfg: Mapping) -> int:
    return int(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])


# ----------------------------------------------------------------------------- ops


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """x: (n, d), w: (d,). x / sqrt(mean(x^2) + eps) * w."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope_rotate_halves(x: np.ndarray, positions: np.ndarray, inv_freq: np.ndarray) -> np.ndarray:
    """x: (n, heads, head_dim). Rotates the pair (x[i], x[i + head_dim/2]) by pos * inv_freq[i]."""
    ang = positions[:, None].astype(np.float64) * inv_freq[None, :]  # (n, head_dim/2)
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def rope_interleaved(x: np.ndarray, positions: np.ndarray, inv_freq: np.ndarray) -> np.ndarray:
    """x: (n, heads, head_dim). Rotates the pair (x[2i], x[2i+1]) by pos * inv_freq[i] (the
    GGUF-llama layout). Used by the tests to prove the q/k permutation facts."""
    ang = positions[:, None].astype(np.float64) * inv_freq[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    out = np.empty_like(x)
    out[..., 0::2] = x[..., 0::2] * cos - x[..., 1::2] * sin
    out[..., 1::2] = x[..., 1::2] * cos + x[..., 0::2] * sin
    return out


def causal_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
    """q: (n, n_head, hd); k, v: (n, n_head_kv, hd). Query head h reads kv head
    h // (n_head / n_head_kv) (GQA). Position i attends to 0..i. Returns (n, n_head * hd)."""
    n, n_head, hd = q.shape
    group = n_head // k.shape[1]
    out = np.empty_like(q)
    future = np.triu(np.ones((n, n), dtype=bool), k=1)
    for h in range(n_head):
        kh, vh = k[:, h // group, :], v[:, h // group, :]
        scores = (q[:, h, :] @ kh.T) * scale  # (n, n)
        scores[future] = -np.inf
        p = np.exp(scores - scores.max(axis=-1, keepdims=True))
        out[:, h, :] = (p / p.sum(axis=-1, keepdims=True)) @ vh
    return out.reshape(n, n_head * hd)


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


# ----------------------------------------------------------------------------- forward


class _Linear:
    """y = x @ W.T (+ b), with the activation quantized when W's storage dtype asks for it."""

    def __init__(self, weights: Mapping, act_quant: Mapping | None, dtype) -> None:
        self.weights, self.act_quant, self.dtype = weights, act_quant or {}, dtype

    def __call__(self, x: np.ndarray, name: str, bias: str | None = None) -> np.ndarray:
        if str(self.act_quant.get(name, "f32")).lower() in QUANTIZED:
            x = dequant_act(*quantize_act_q8(x)).astype(self.dtype)
        y = x @ self.weights[name].astype(self.dtype).T
        if bias is not None and bias in self.weights:
            y = y + self.weights[bias].astype(self.dtype)
        return y


def forward(
    cfg: Mapping,
    weights: Mapping[str, np.ndarray],
    tokens: list[int],
    *,
    act_quant: Mapping[str, str] | None = None,
    kv_f16: bool = False,
    dtype=np.float64,
) -> np.ndarray:
    """Logits of every position of ``tokens`` (a fresh context, positions 0..n-1).

    Args:
        cfg: HF config dict (see the module docstring).
        weights: HF name -> float array (2-D weights are (out_features, in_features)).
        tokens: token ids.
        act_quant: HF weight name -> storage dtype ("f32", "q4_1", ...). Matmuls whose weight is
            stored in a block type (QUANTIZED) see their input quantized by
            :func:`quantize_act_q8`.
            None: no activation quantization.
        kv_f16: round K (after RoPE) and V to float16 as they enter the KV cache.
        dtype: math dtype, float64 (default) or float32.
    Returns:
        (len(tokens), vocab) logits in ``dtype``.
    """
    n_head, n_kv = int(cfg["num_attention_heads"]), int(cfg["num_key_value_heads"])
    hd, eps = head_dim_of(cfg), float(cfg["rms_norm_eps"])
    inv_freq = inv_freq_from_config(cfg)
    linear = _Linear(weights, act_quant, dtype)
    pos = np.arange(len(tokens))
    n = len(tokens)

    def w(name: str) -> np.ndarray:
        return weights[name].astype(dtype)

    x = w("model.embed_tokens.weight")[np.asarray(tokens)]  # (n, hidden)
    for i in range(int(cfg["num_hidden_layers"])):
        p = f"model.layers.{i}."
        h = rms_norm(x, w(p + "input_layernorm.weight"), eps)
        a = p + "self_attn."
        q = linear(h, a + "q_proj.weight", a + "q_proj.bias").reshape(n, n_head, hd)
        k = linear(h, a + "k_proj.weight", a + "k_proj.bias").reshape(n, n_kv, hd)
        v = linear(h, a + "v_proj.weight", a + "v_proj.bias").reshape(n, n_kv, hd)
        q, k = rope_rotate_halves(q, pos, inv_freq), rope_rotate_halves(k, pos, inv_freq)
        if kv_f16:
            k = k.astype(np.float32).astype(np.float16).astype(dtype)
            v = v.astype(np.float32).astype(np.float16).astype(dtype)
        attn = causal_attention(q, k, v, 1.0 / math.sqrt(hd))
        x = x + linear(attn, a + "o_proj.weight")
        h = rms_norm(x, w(p + "post_attention_layernorm.weight"), eps)
        m = p + "mlp."
        gate_up = silu(linear(h, m + "gate_proj.weight")) * linear(h, m + "up_proj.weight")
        x = x + linear(gate_up, m + "down_proj.weight")
    x = rms_norm(x, w("model.norm.weight"), eps)
    head = "lm_head.weight" if "lm_head.weight" in weights else "model.embed_tokens.weight"
    return linear(x, head)


# ----------------------------------------------------------------------------- comparisons


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def kl_divergence(ref_logits: np.ndarray, other_logits: np.ndarray) -> np.ndarray:
    """KL(softmax(ref) || softmax(other)) per row, in nats."""
    lp, lq = log_softmax(ref_logits), log_softmax(other_logits)
    return (np.exp(lp) * (lp - lq)).sum(axis=-1)


def top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of rows whose argmax agrees."""
    return float(np.mean(np.argmax(a, axis=-1) == np.argmax(b, axis=-1)))
