"""RoPE inverse frequencies (plain, "linear", "llama3", GGUF ``rope_freqs.weight`` divisors), shared
by the family modules (re-exported by :mod:`metallic.families.base`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import CorruptFile, NotImplementedFeature

TAG = "open_model"


def rope_inv_freq(
    head_dim: int,
    theta: float,
    scaling: dict[str, Any] | None = None,
    freq_factors: np.ndarray | None = None,
    *,
    source: str = "model",
) -> list[float]:
    """RoPE inverse frequencies after scaling: ``1 / theta ** (2i / head_dim)``, i < head_dim/2.

    Args:
        head_dim: rotary dimension (even).
        theta: RoPE base.
        scaling: HF ``rope_scaling`` dict or None. ``rope_type`` (or legacy ``type``)
            "default"/None: plain; "linear": divide by ``factor``; "llama3": Llama 3.1 rule with
            ``factor``, ``low_freq_factor``, ``high_freq_factor``,
            ``original_max_position_embeddings``.
        freq_factors: GGUF ``rope_freqs.weight`` values, (head_dim/2,) divisors, or None.
        source: file path for messages.

    Returns:
        head_dim/2 floats.

    Raises:
        CorruptFile: bad scaling parameters or divisors.
        NotImplementedFeature: other scaling types (dynamic, yarn, longrope, ...).
    """
    if head_dim <= 0 or head_dim % 2 or not (theta > 0 and math.isfinite(theta)):
        raise CorruptFile(
            f"[{TAG}] {source}: rope: expected an even head_dim > 0 and theta > 0, "
            f"got {head_dim} and {theta}"
        )
    inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    kind = None
    if scaling is not None:
        if not isinstance(scaling, dict):
            raise CorruptFile(f"[{TAG}] {source}: key rope_scaling: expected an object or null")
        kind = scaling.get("rope_type", scaling.get("type"))
    if kind in (None, "default"):
        pass
    elif kind == "linear":
        inv = inv / _param(scaling, "factor", source)
    elif kind == "llama3":
        inv = _llama3(inv, scaling, source)
    else:
        raise NotImplementedFeature(f"[{TAG}] {source}: rope_scaling type {kind!r} not supported")
    if freq_factors is not None:
        f = np.asarray(freq_factors, dtype=np.float64).reshape(-1)
        if f.shape != inv.shape or not np.all(np.isfinite(f)) or not np.all(f > 0):
            raise CorruptFile(
                f"[{TAG}] {source}: tensor rope_freqs.weight: expected {inv.size} finite "
                f"positive divisors, got {f.size} values"
            )
        inv = inv / f
    return [float(x) for x in inv]


def _param(scaling: dict[str, Any], key: str, source: str) -> float:
    v = scaling.get(key)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not (v > 0 and math.isfinite(v)):
        raise CorruptFile(
            f"[{TAG}] {source}: key rope_scaling.{key}: expected a positive number, got {v!r}"
        )
    return float(v)


def _llama3(inv: np.ndarray, scaling: dict[str, Any], source: str) -> np.ndarray:
    # Wavelengths longer than old_ctx/low are slowed by `factor`, shorter than old_ctx/high kept,
    # and the band between blends the two linearly in old_ctx/wavelen.
    factor = _param(scaling, "factor", source)
    low = _param(scaling, "low_freq_factor", source)
    high = _param(scaling, "high_freq_factor", source)
    old_ctx = _param(scaling, "original_max_position_embeddings", source)
    if high <= low:
        raise CorruptFile(
            f"[{TAG}] {source}: key rope_scaling: high_freq_factor {high} must exceed "
            f"low_freq_factor {low}"
        )
    wavelen = 2.0 * math.pi / inv
    smooth = (old_ctx / wavelen - low) / (high - low)
    blended = (1.0 - smooth) * inv / factor + smooth * inv
    out = np.where(wavelen > old_ctx / low, inv / factor, inv)
    medium = (wavelen >= old_ctx / high) & (wavelen <= old_ctx / low)
    return np.where(medium, blended, out)
