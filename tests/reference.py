"""Independent NumPy reference for the decoder families, with HF transformers' semantics.

Written for clarity, not speed: every op is a few lines of plain NumPy and the forward pass reads
top to bottom like the model card. The engine's kernels and whole-model outputs are checked
against it, and it is itself checked against transformers' logits (tests/fixtures/families/,
written by scripts/make_family_fixtures.py). Dequantizers live in ``reference_quant.py`` and RoPE
in ``reference_rope.py``; both are re-exported here.

Conventions
-----------
* Weights use HF names (``model.layers.N.self_attn.q_proj.weight`` ...) and HF layouts: q/k rows
  are *not* permuted and RoPE pairs element ``i`` with ``i + rot/2`` ("rotate halves"). Gemma
  norm weights are HF's ``w`` (the norm multiplies by ``1 + w``; GGUF files store ``1 + w``).
* ``cfg`` is an HF ``config.json`` dict with hub-style keys (``rope_theta``, ``rope_scaling``, ...).
  q/k/v biases are used when present in ``weights`` (qwen2); the head is ``lm_head.weight`` when
  present, else the tied ``model.embed_tokens.weight``. Defaults for missing keys are the
  transformers config classes' defaults (e.g. mistral ``sliding_window`` 4096, gemma2 softcaps
  50 / 30, gemma ``query_pre_attn_scalar`` 256).
* Math runs in float64 by default. The reference stands for the exact result, so its own rounding
  (~1e-16) vanishes next to the engine's float32 rounding (~6e-8 per op) and every measured
  difference is the engine's. ``dtype=np.float32`` exists to measure that float32 noise floor.
* The engine's two deliberate precision trades are reproduced exactly when asked for:
  ``act_quant`` (int8 activations for matmuls whose weight is stored in a block type) and
  ``kv_f16`` (K after RoPE and V rounded to float16 when written to the cache).

Families (``cfg["model_type"]``) and what each adds to the llama block
----------------------------------------------------------------------
* ``llama``, ``qwen2`` (q/k/v biases): pre-norm block, SiLU-gated MLP, causal attention.
* ``qwen3``: per-head RMSNorm of q and k (``self_attn.q_norm`` / ``k_norm``, over head_dim)
  before RoPE; explicit ``head_dim``.
* ``mistral``: every layer attends to a sliding window of ``sliding_window`` keys.
* ``phi3``: fused ``qkv_proj`` (rows q, k, v) and ``gate_up_proj`` (rows gate, up); RoPE on the
  first ``head_dim * partial_rotary_factor`` features; ``longrope`` scaling; a ``sliding_window``
  when set (llama.cpp ignores phi3's window).
* ``gemma2`` / ``gemma3_text``: RMSNorm multiplies by ``(1 + w)``; four norms per block (input,
  post-attention on the attention output, pre-feedforward, post-feedforward on the MLP output);
  GELU-tanh gated MLP; embeddings times sqrt(hidden_size) rounded to the model dtype; attention
  scale ``query_pre_attn_scalar ** -0.5``; sliding-window layers (gemma2: even layers; gemma3:
  ``layer_types`` or every layer but each ``sliding_window_pattern``-th) and final-logit
  soft-capping ``tanh(x / cap) * cap``. gemma2 also soft-caps attention scores (before the
  mask); gemma3 adds the per-head q/k norm (also ``1 + w``) and a second RoPE base for its
  sliding layers.
* Sliding window W (transformers' ``sliding_window_overlay``: ``kv_idx > q_idx - W``): the query
  at position t sees keys t-W+1 .. t, i.e. W keys including itself.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

import numpy as np

from reference_quant import (  # noqa: F401  (re-exported: the tests use reference.*)
    DEQUANT,
    QK,
    QUANTIZED,
    dequant_act,
    dequant_bf16,
    dequant_f16,
    dequant_f32,
    dequant_q4_0,
    dequant_q4_1,
    dequant_q5_0,
    dequant_q5_1,
    dequant_q6_k,
    dequant_q8_0,
    dequantize,
    quantize_act_q8,
)
from reference_rope import (  # noqa: F401  (re-exported)
    FULL,
    SLIDING,
    Rope,
    apply_rope,
    head_dim_of,
    inv_freq_from_config,
    llama3_inv_freq,
    longrope_attention_factor,
    longrope_original,
    rope_for_layer,
    rope_interleaved,
    rope_inv_freq,
    rope_rotate_halves,
    rope_theta,
    rotary_dim,
)

# ----------------------------------------------------------------------------- ops


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """x: (..., d), w: (d,). x / sqrt(mean(x^2) + eps) * w."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def causal_attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    scale: float,
    *,
    window: int | None = None,
    softcap: float | None = None,
) -> np.ndarray:
    """q: (n, n_head, hd); k, v: (n, n_head_kv, hd). Query head h reads kv head
    h // (n_head / n_head_kv) (GQA). Position i attends to keys j with i - window < j <= i (all
    j <= i without a window); scores are scaled, then soft-capped (tanh(s / cap) * cap), then
    masked. Returns (n, n_head * hd)."""
    n, n_head, hd = q.shape
    group = n_head // k.shape[1]
    out = np.empty((n, n_head, v.shape[-1]), dtype=q.dtype)
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    masked = j > i
    if window is not None:
        masked |= j <= i - window
    for h in range(n_head):
        kh, vh = k[:, h // group, :], v[:, h // group, :]
        scores = (q[:, h, :] @ kh.T) * scale  # (n, n)
        if softcap is not None:
            scores = np.tanh(scores / softcap) * softcap
        scores[masked] = -np.inf
        p = np.exp(scores - scores.max(axis=-1, keepdims=True))
        out[:, h, :] = (p / p.sum(axis=-1, keepdims=True)) @ vh
    return out.reshape(n, n_head * v.shape[-1])


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """transformers' ``gelu_pytorch_tanh``: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


def soft_cap(x: np.ndarray, cap: float | None) -> np.ndarray:
    return x if cap is None else np.tanh(x / cap) * cap


# ----------------------------------------------------------------------------- family traits

ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "silu": silu,
    "gelu_pytorch_tanh": gelu_tanh,
}
GEMMA = ("gemma2", "gemma3_text")
MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral", "phi3", *GEMMA)


def round_to_model_dtype(value: float, cfg: Mapping) -> float:
    """``value`` as transformers holds it in the model dtype (``torch_dtype`` / ``dtype`` of the
    config, float32 when absent): a float32 tensor, then cast (bfloat16: round to nearest even)."""
    name = cfg.get("torch_dtype") or cfg.get("dtype") or "float32"
    f32 = np.float32(value)
    if name == "float32":
        return float(f32)
    if name == "float16":
        return float(np.float16(f32))
    if name == "bfloat16":
        bits = int(f32.view(np.uint32))
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return float(np.uint32(bits).view(np.float32))
    raise ValueError(f"reference: unsupported model dtype {name!r}")


def layer_types(cfg: Mapping) -> list[str]:
    """Per layer "full_attention" or "sliding_attention", as the family's config class sets it."""
    n, mt = int(cfg["num_hidden_layers"]), cfg.get("model_type", "llama")
    if mt in GEMMA:
        if cfg.get("layer_types"):
            types = list(cfg["layer_types"])
        else:  # gemma2: alternating, gemma3: sliding_window_pattern (BC default 6)
            pattern = 2 if mt == "gemma2" else int(cfg.get("sliding_window_pattern", 6))
            types = [SLIDING if (i + 1) % pattern else FULL for i in range(n)]
    elif mt in ("mistral", "phi3"):
        types = [SLIDING if sliding_window(cfg) is not None else FULL] * n
    elif mt in ("qwen2", "qwen3") and cfg.get("use_sliding_window"):
        raise ValueError("reference: qwen use_sliding_window=True is not supported")
    else:
        types = [FULL] * n
    if len(types) != n or set(types) - {FULL, SLIDING}:
        raise ValueError(f"reference: layer_types {types} for {n} layers")
    return types


def sliding_window(cfg: Mapping) -> int | None:
    mt = cfg.get("model_type", "llama")
    if mt in ("mistral", *GEMMA):
        return cfg.get("sliding_window", 4096)  # the config classes' default
    if mt == "phi3":
        return cfg.get("sliding_window")
    return None


@dataclasses.dataclass(frozen=True)
class Arch:
    """What the config says about the block structure (the one place that dispatches on
    ``model_type``)."""

    model_type: str
    norm_offset: float  # gemma: RMSNorm multiplies by (norm_offset + w)
    qk_norm: bool  # per-head RMSNorm of q and k before RoPE
    sandwich: bool  # gemma: post-attention / pre- and post-feedforward norms
    fused: bool  # phi3: qkv_proj and gate_up_proj
    act: Callable[[np.ndarray], np.ndarray]
    embed_scale: float | None
    attn_scale: float
    attn_softcap: float | None
    final_softcap: float | None
    layer_types: tuple[str, ...]
    window: int | None


def arch_of(cfg: Mapping) -> Arch:
    mt = cfg.get("model_type", "llama")
    if mt not in MODEL_TYPES:
        raise ValueError(f"reference: unsupported model_type {mt!r}")
    gemma = mt in GEMMA
    act = cfg.get("hidden_activation", "gelu_pytorch_tanh") if gemma else cfg.get("hidden_act")
    if (act or "silu") not in ACTIVATIONS:
        raise ValueError(f"reference: unsupported activation {act!r}")
    attn_softcap = final_softcap = None
    if mt == "gemma2":
        attn_softcap = cfg.get("attn_logit_softcapping", 50.0)
        final_softcap = cfg.get("final_logit_softcapping", 30.0)
    elif mt == "gemma3_text":
        if cfg.get("attn_logit_softcapping") is not None:  # HF ignores it, llama.cpp refuses it
            raise ValueError("reference: gemma3 with attn_logit_softcapping")
        final_softcap = cfg.get("final_logit_softcapping")
    scalar = float(cfg.get("query_pre_attn_scalar", 256)) if gemma else head_dim_of(cfg)
    return Arch(
        model_type=mt,
        norm_offset=1.0 if gemma else 0.0,
        qk_norm=mt in ("qwen3", "gemma3_text"),
        sandwich=gemma,
        fused=mt == "phi3",
        act=ACTIVATIONS[act or "silu"],
        embed_scale=round_to_model_dtype(math.sqrt(cfg["hidden_size"]), cfg) if gemma else None,
        attn_scale=scalar**-0.5,
        attn_softcap=attn_softcap,
        final_softcap=final_softcap,
        layer_types=tuple(layer_types(cfg)),
        window=sliding_window(cfg),
    )


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
    longrope_long: bool | None = None,
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
        longrope_long: longrope only: force the long (True) or short (False) factors. None is
            transformers' rule (long iff len(tokens) > original_max_position_embeddings);
            llama.cpp's rule is long iff its context size > original.
    Returns:
        (len(tokens), vocab) logits in ``dtype``.
    """
    arch = arch_of(cfg)
    n_head, n_kv = int(cfg["num_attention_heads"]), int(cfg["num_key_value_heads"])
    hd, eps = head_dim_of(cfg), float(cfg["rms_norm_eps"])
    n = len(tokens)
    ropes = {t: rope_for_layer(cfg, t, n, longrope_long) for t in set(arch.layer_types)}
    linear = _Linear(weights, act_quant, dtype)
    pos = np.arange(n)

    def w(name: str) -> np.ndarray:
        return weights[name].astype(dtype)

    def norm(x: np.ndarray, name: str) -> np.ndarray:
        scale = w(name) + arch.norm_offset if arch.norm_offset else w(name)
        return rms_norm(x, scale, eps)

    x = w("model.embed_tokens.weight")[np.asarray(tokens)]  # (n, hidden)
    if arch.embed_scale is not None:
        x = x * dtype(arch.embed_scale)
    for i, kind in enumerate(arch.layer_types):
        p = f"model.layers.{i}."
        h = norm(x, p + "input_layernorm.weight")
        a = p + "self_attn."
        if arch.fused:
            qkv = linear(h, a + "qkv_proj.weight")
            q, k, v = np.split(qkv, [n_head * hd, (n_head + n_kv) * hd], axis=-1)
        else:
            q = linear(h, a + "q_proj.weight", a + "q_proj.bias")
            k = linear(h, a + "k_proj.weight", a + "k_proj.bias")
            v = linear(h, a + "v_proj.weight", a + "v_proj.bias")
        q, k, v = q.reshape(n, n_head, hd), k.reshape(n, n_kv, hd), v.reshape(n, n_kv, hd)
        if arch.qk_norm:
            q, k = norm(q, a + "q_norm.weight"), norm(k, a + "k_norm.weight")
        q, k = apply_rope(q, pos, ropes[kind]), apply_rope(k, pos, ropes[kind])
        if kv_f16:
            k = k.astype(np.float32).astype(np.float16).astype(dtype)
            v = v.astype(np.float32).astype(np.float16).astype(dtype)
        window = arch.window if kind == SLIDING else None
        attn = causal_attention(q, k, v, arch.attn_scale, window=window, softcap=arch.attn_softcap)
        out = linear(attn, a + "o_proj.weight")
        if arch.sandwich:
            out = norm(out, p + "post_attention_layernorm.weight")
        x = x + out
        m = p + "mlp."
        if arch.sandwich:
            h = norm(x, p + "pre_feedforward_layernorm.weight")
        else:
            h = norm(x, p + "post_attention_layernorm.weight")
        if arch.fused:
            gate, up = np.split(linear(h, m + "gate_up_proj.weight"), 2, axis=-1)
        else:
            gate, up = linear(h, m + "gate_proj.weight"), linear(h, m + "up_proj.weight")
        out = linear(arch.act(gate) * up, m + "down_proj.weight")
        if arch.sandwich:
            out = norm(out, p + "post_feedforward_layernorm.weight")
        x = x + out
    x = norm(x, "model.norm.weight")
    head = "lm_head.weight" if "lm_head.weight" in weights else "model.embed_tokens.weight"
    return soft_cap(linear(x, head), arch.final_softcap)


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
