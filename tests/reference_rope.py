"""Rotary position embeddings for the NumPy reference (part of it, re-exported by
``tests/reference.py``), with HF transformers' semantics read from ``modeling_rope_utils.py`` and
the family modeling files:

* pairs are "rotate halves": element ``i`` with ``i + rot/2`` of the first ``rot`` features, where
  ``rot = int(head_dim * partial_rotary_factor)`` (phi3); the other features pass unchanged.
* ``rope_scaling`` kinds: ``linear`` (inv_freq / factor), ``llama3`` (blended per wavelength) and
  ``longrope`` (phi3; ``su`` is its old name): inv_freq / ext_factor, with ``ext_factor`` the
  ``long_factor`` list when the sequence is longer than ``original_max_position_embeddings`` and
  ``short_factor`` otherwise. transformers decides per forward call on ``max(position_ids) + 1``
  (so a fresh prompt of n tokens uses long iff n > original); llama.cpp decides once on the
  context size (long iff n_ctx > original). cos and sin are both multiplied by the attention factor
  (``attention_factor``, default sqrt(1 + ln(factor) / ln(original)) with ``factor`` defaulting to
  max_position_embeddings / original), so the *rotated* features of q and k are scaled by it and
  the pass-through features are not.
* gemma3 keeps two RoPEs: full-attention layers use ``rope_theta`` (default 1e6) and
  ``rope_scaling``; sliding-window layers use ``rope_local_base_freq`` (default 1e4) unscaled.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np

FULL, SLIDING = "full_attention", "sliding_attention"


def head_dim_of(cfg: Mapping) -> int:
    return int(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])


def rope_inv_freq(head_dim: int, theta: float) -> np.ndarray:
    """(head_dim/2,) float64: theta ** (-2i / head_dim) (``head_dim``: the rotated width)."""
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


@dataclasses.dataclass(frozen=True)
class Rope:
    """The rotation one layer applies: frequencies of the first ``2 * len(inv_freq)`` features
    and the factor on cos and sin."""

    inv_freq: np.ndarray  # (rot/2,) float64
    mscale: float = 1.0


def _is_gemma3(cfg: Mapping) -> bool:
    return cfg.get("model_type") in ("gemma3_text", "gemma3")


def _scaling(cfg: Mapping, layer_type: str) -> dict:
    if "rope_parameters" in cfg:
        raise ValueError("reference: transformers-5 'rope_parameters' configs are not supported")
    if _is_gemma3(cfg) and layer_type == SLIDING:
        return {}  # the local RoPE is never scaled
    return dict(cfg.get("rope_scaling") or {})


def _kind(scaling: Mapping) -> str:
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    return "longrope" if kind == "su" else kind


def rope_theta(cfg: Mapping, layer_type: str = FULL) -> float:
    if _is_gemma3(cfg):
        if layer_type == SLIDING:
            return float(cfg.get("rope_local_base_freq", 10000.0))
        return float(cfg.get("rope_theta", 1_000_000.0))
    return float(cfg.get("rope_theta", 10000.0))


def rotary_dim(cfg: Mapping) -> int:
    """int(head_dim * partial_rotary_factor); the factor of ``rope_scaling`` wins over the
    top-level key, as in phi3's config conversion."""
    scaling = dict(cfg.get("rope_scaling") or {})
    factor = scaling.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
    return int(head_dim_of(cfg) * float(factor))


def longrope_original(cfg: Mapping) -> int:
    """The pretraining length longrope compares against (the top-level key wins, as in HF)."""
    scaling = dict(cfg.get("rope_scaling") or {})
    if "original_max_position_embeddings" in cfg:
        return int(cfg["original_max_position_embeddings"])
    return int(scaling.get("original_max_position_embeddings", cfg["max_position_embeddings"]))


def longrope_attention_factor(cfg: Mapping) -> float:
    scaling = dict(cfg.get("rope_scaling") or {})
    if scaling.get("attention_factor") is not None:
        return float(scaling["attention_factor"])
    orig = longrope_original(cfg)
    factor = scaling.get("factor") or cfg["max_position_embeddings"] / orig
    return math.sqrt(1.0 + math.log(factor) / math.log(orig)) if factor > 1.0 else 1.0


def rope_for_layer(
    cfg: Mapping, layer_type: str = FULL, seq_len: int | None = None, long: bool | None = None
) -> Rope:
    """The RoPE of a layer of ``layer_type``.

    Args:
        seq_len: tokens in the forward call (longrope: long factors iff seq_len > original).
        long: force longrope's long (True) or short (False) factors; None applies HF's rule.
    """
    base = rope_inv_freq(rotary_dim(cfg), rope_theta(cfg, layer_type))
    scaling = _scaling(cfg, layer_type)
    kind = _kind(scaling)
    if kind == "default":
        return Rope(base)
    if kind == "linear":
        return Rope(base / float(scaling["factor"]))
    if kind == "llama3":
        return Rope(
            llama3_inv_freq(
                base,
                float(scaling["factor"]),
                float(scaling["low_freq_factor"]),
                float(scaling["high_freq_factor"]),
                int(scaling["original_max_position_embeddings"]),
            )
        )
    if kind == "longrope":
        if long is None:
            long = seq_len is not None and seq_len > longrope_original(cfg)
        ext = np.asarray(scaling["long_factor" if long else "short_factor"], dtype=np.float64)
        if ext.shape != base.shape:
            raise ValueError(f"reference: longrope factors: expected {base.shape}, got {ext.shape}")
        return Rope(base / ext, longrope_attention_factor(cfg))
    raise ValueError(f"reference: unsupported rope_scaling {kind!r}")


def inv_freq_from_config(cfg: Mapping, layer_type: str = FULL) -> np.ndarray:
    """The inverse frequencies after any ``rope_scaling`` (longrope: the short factors)."""
    return rope_for_layer(cfg, layer_type).inv_freq


# ----------------------------------------------------------------------------- rotations


def rope_rotate_halves(
    x: np.ndarray, positions: np.ndarray, inv_freq: np.ndarray, mscale: float = 1.0
) -> np.ndarray:
    """x: (n, heads, rot). Rotates the pair (x[i], x[i + rot/2]) by pos * inv_freq[i], cos and
    sin multiplied by ``mscale``."""
    ang = positions[:, None].astype(np.float64) * inv_freq[None, :]  # (n, rot/2)
    cos, sin = np.cos(ang)[:, None, :] * mscale, np.sin(ang)[:, None, :] * mscale
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


def apply_rope(x: np.ndarray, positions: np.ndarray, rope: Rope) -> np.ndarray:
    """x: (n, heads, head_dim). Rotate-halves on the first 2 * len(inv_freq) features only."""
    rot = 2 * len(rope.inv_freq)
    if rot == x.shape[-1]:
        return rope_rotate_halves(x, positions, rope.inv_freq, rope.mscale)
    turned = rope_rotate_halves(x[..., :rot], positions, rope.inv_freq, rope.mscale)
    return np.concatenate([turned, x[..., rot:]], axis=-1)
