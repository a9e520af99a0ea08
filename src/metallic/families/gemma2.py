"""Gemma 2 family (GGUF ``gemma2``; HF ``gemma2`` / ``Gemma2ForCausalLM``).

The Gemma 3 block (gemma3.py) without the q/k norms, with alternating sliding-window and global
layers (every 2nd layer global), one RoPE base for both, and tanh soft-capping of the attention
scores and of the final logits (``attn_softcap`` / ``final_softcap``; llama.cpp's defaults 50 and
30 when a GGUF names none). Everything else (four norms, ``(1 + w)`` on HF weights, GELU-tanh,
sqrt(hidden) embedding scale, ``query_pre_attn_scalar``) is shared with gemma3.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import gemma3
from .gemma3 import ModelArgs, Variant

ARCH = "gemma2"
VARIANT = Variant(
    arch=ARCH,
    pattern=2,
    qk_norm=False,
    default_theta=10000.0,
    local_theta=None,
    big_layers=46,
    attn_softcap=50.0,
    final_softcap=30.0,
)
__all__ = ["ARCH", "ModelArgs", "args_from_gguf", "args_from_hf", "canonical_name", "native_config"]


def args_from_gguf(metadata: dict[str, Any], *, source: str = "<gguf>") -> ModelArgs:
    """ModelArgs from GGUF ``gemma2.*`` metadata (see gemma3.args_from_gguf)."""
    return gemma3.args_from_gguf(metadata, source=source, variant=VARIANT)


def args_from_hf(config: dict[str, Any], *, source: str = "<config.json>") -> ModelArgs:
    """ModelArgs from an HF ``config.json`` (see gemma3.args_from_hf)."""
    config = {"attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, **config}
    return gemma3.args_from_hf(config, source=source, variant=VARIANT)


canonical_name = gemma3.canonical_name


def native_config(
    args: ModelArgs,
    source_format: str,
    rope_freq_factors: np.ndarray | None = None,
    *,
    source: str = "model",
) -> dict[str, Any]:
    """Every native ``ModelConfig`` field (see gemma3.native_config)."""
    return gemma3.native_config(
        args, source_format, rope_freq_factors, source=source, variant=VARIANT
    )
