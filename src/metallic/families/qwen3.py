"""Qwen3 family (dense Qwen3 models).

Decoder: Llama's block without biases, plus a per-head RMSNorm of q and k before RoPE
(``blk.N.attn_q_norm`` / ``attn_k_norm``, head_dim weights; the decoder plan's ``qk_norm``
switch), and a head_dim of its own (not hidden / heads). Neither GGUF ``qwen3`` nor HF permutes
q/k rows, so RoPE pairs (i, i + head_dim/2) in both formats; weights stay zero-copy.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ..errors import InvalidArgument
from .base import (
    HF_LAYER_NAMES,
    TAG,
    LlamaLikeArgs,
    gguf_common_args,
    hf_args,
    hf_to_canonical,
    llama_like_config,
)
from .switches import FULL, hf_layer_types, hf_rope, windows

ARCH = "qwen3"
_QK_NORMS = {
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
}


@dataclasses.dataclass
class ModelArgs(LlamaLikeArgs):
    """Qwen3 hyper-parameters, named like HF ``config.json`` keys (the shared ones: see
    :class:`~metallic.families.base.LlamaLikeArgs`).

    Attributes:
        max_position_embeddings: trained context length.
        rope_theta: RoPE base.
        layer_window: per layer sliding window (0: global), from ``use_sliding_window`` /
            ``layer_types``; empty: every layer global.
        hidden_act: MLP activation ("silu").
        model_type: HF model_type.
    """

    max_position_embeddings: int = 40960
    rope_theta: float = 1000000.0
    layer_window: list[int] = dataclasses.field(default_factory=list)
    hidden_act: str = "silu"
    model_type: str = "qwen3"


def args_from_gguf(metadata: dict[str, Any], *, source: str = "<gguf>") -> ModelArgs:
    """ModelArgs from GGUF ``qwen3.*`` metadata.

    Args:
        metadata: GGUF metadata (``GGUFFile.metadata``).
        source: file path for messages.

    Returns:
        The args; ``tie_word_embeddings`` is False until the loader sees no ``output.weight``.
    """
    return ModelArgs.from_dict(gguf_common_args(metadata, ARCH, source))


def args_from_hf(config: dict[str, Any], *, source: str = "<config.json>") -> ModelArgs:
    """ModelArgs from an HF ``config.json`` dict (transformers 4 or 5 layout).

    Args:
        config: parsed config.json.
        source: file path for messages.

    Returns:
        The args.

    Raises:
        CorruptFile: a required key is missing or malformed.
        NotImplementedFeature: a non-SiLU activation.
    """
    theta, scaling = hf_rope(config, FULL, 1000000.0, source)
    cfg = {**config, "rope_theta": theta, "rope_scaling": scaling}
    cfg.pop("layer_window", None)
    args = hf_args(ModelArgs, cfg, source)
    if config.get("use_sliding_window"):
        n = args.num_hidden_layers
        types = hf_layer_types(config, n, 0, source)
        args.layer_window = windows(types, config.get("sliding_window"), source)
    return args


def canonical_name(hf_name: str) -> str | None:
    """Canonical name of an HF tensor (None for ignored buffers).

    Args:
        hf_name: HF checkpoint tensor name.

    Returns:
        Canonical GGUF-style name, None to ignore, or the input when unknown.
    """
    return hf_to_canonical(hf_name, {**HF_LAYER_NAMES, **_QK_NORMS})


def native_config(
    args: ModelArgs,
    source_format: str,
    rope_freq_factors: np.ndarray | None = None,
    *,
    source: str = "model",
) -> dict[str, Any]:
    """Every native ``ModelConfig`` field.

    Args:
        args: the model args (``tie_word_embeddings`` already resolved by the loader).
        source_format: "gguf" or "hf" (both pair RoPE dims NEOX-style for qwen3).
        rope_freq_factors: GGUF ``rope_freqs.weight`` divisors, or None.
        source: file path for messages.

    Returns:
        Dict of ModelConfig fields.
    """
    if source_format not in ("gguf", "hf"):
        raise InvalidArgument(f"[{TAG}] source_format {source_format!r}, expected 'gguf' or 'hf'")
    cfg = llama_like_config(
        args, rope_neox=True, qkv_bias=False, freq_factors=rope_freq_factors, source=source
    )
    cfg["qk_norm"] = True
    cfg["layer_window"] = list(args.layer_window)
    return cfg
