"""Qwen2 family (Qwen2, Qwen2.5 dense models).

Decoder: Llama's block plus biases on the q/k/v projections. Both GGUF ``qwen2`` and HF
safetensors keep q/k rows in the original order, so RoPE pairs (i, i + head_dim/2)
(``rope_neox=True``) for both formats; weights stay zero-copy.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ..errors import InvalidArgument, NotImplementedFeature
from .base import (
    TAG,
    LlamaLikeArgs,
    gguf_common_args,
    hf_args,
    hf_to_canonical,
    llama_like_config,
)

ARCH = "qwen2"


@dataclasses.dataclass
class ModelArgs(LlamaLikeArgs):
    """Qwen2 hyper-parameters, named like HF ``config.json`` keys (the shared ones: see
    :class:`~metallic.families.base.LlamaLikeArgs`).

    Attributes:
        max_position_embeddings: trained context length.
        rope_theta: RoPE base.
        use_sliding_window: sliding-window attention switch (unsupported when True).
        sliding_window: window size, only meaningful with use_sliding_window.
        hidden_act: MLP activation ("silu").
        model_type: HF model_type.
    """

    max_position_embeddings: int = 32768
    rope_theta: float = 1000000.0
    use_sliding_window: bool = False
    sliding_window: int | None = None
    hidden_act: str = "silu"
    model_type: str = "qwen2"


def args_from_gguf(metadata: dict[str, Any], *, source: str = "<gguf>") -> ModelArgs:
    """ModelArgs from GGUF ``qwen2.*`` metadata.

    Args:
        metadata: GGUF metadata (``GGUFFile.metadata``).
        source: file path for messages.

    Returns:
        The args; ``tie_word_embeddings`` is False until the loader sees no ``output.weight``.
    """
    return ModelArgs.from_dict(gguf_common_args(metadata, ARCH, source))


def args_from_hf(config: dict[str, Any], *, source: str = "<config.json>") -> ModelArgs:
    """ModelArgs from an HF ``config.json`` dict.

    Args:
        config: parsed config.json.
        source: file path for messages.

    Returns:
        The args.

    Raises:
        CorruptFile: a required key is missing.
        NotImplementedFeature: sliding-window attention or a non-SiLU activation.
    """
    args = hf_args(ModelArgs, config, source)
    if args.use_sliding_window:
        # DEBT: sliding-window attention is not implemented in the decoder plan.
        raise NotImplementedFeature(f"[{TAG}] {source}: key use_sliding_window: not supported")
    return args


def canonical_name(hf_name: str) -> str | None:
    """Canonical name of an HF tensor (None for ignored buffers).

    Args:
        hf_name: HF checkpoint tensor name.

    Returns:
        Canonical GGUF-style name, None to ignore, or the input when unknown.
    """
    return hf_to_canonical(hf_name)


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
        source_format: "gguf" or "hf" (both pair RoPE dims NEOX-style for qwen2).
        rope_freq_factors: GGUF ``rope_freqs.weight`` divisors, or None.
        source: file path for messages.

    Returns:
        Dict of ModelConfig fields.
    """
    if source_format not in ("gguf", "hf"):
        raise InvalidArgument(f"[{TAG}] source_format {source_format!r}, expected 'gguf' or 'hf'")
    return llama_like_config(
        args, rope_neox=True, qkv_bias=True, freq_factors=rope_freq_factors, source=source
    )
