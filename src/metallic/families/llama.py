"""Llama family (also Mistral-without-sliding-window, SmolLM2, TinyLlama, Llama 3.x).

Decoder: RMSNorm -> GQA attention with RoPE -> RMSNorm -> SwiGLU MLP, no biases.

RoPE layout (weights stay zero-copy): llama.cpp's converter permutes the q/k rows of GGUF
``llama`` files so each head's rotary halves are interleaved, so GGUF pairs (2i, 2i+1)
(``rope_neox=False``); HF safetensors keep the original order and pair (i, i + head_dim/2)
(``rope_neox=True``).
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
    meta_int,
)
from .switches import check_window

ARCH = "llama"


@dataclasses.dataclass
class ModelArgs(LlamaLikeArgs):
    """Llama hyper-parameters, named like HF ``config.json`` keys (the shared ones: see
    :class:`~metallic.families.base.LlamaLikeArgs`).

    Attributes:
        attention_bias: biases on q/k/v/o projections (unsupported when True).
        mlp_bias: biases on the MLP projections (unsupported when True).
        hidden_act: MLP activation ("silu").
        sliding_window: Mistral sliding-window size or None.
        model_type: HF model_type.
    """

    attention_bias: bool = False
    mlp_bias: bool = False
    hidden_act: str = "silu"
    sliding_window: int | None = None
    model_type: str = "llama"


def args_from_gguf(metadata: dict[str, Any], *, source: str = "<gguf>") -> ModelArgs:
    """ModelArgs from GGUF ``llama.*`` metadata.

    Args:
        metadata: GGUF metadata (``GGUFFile.metadata``).
        source: file path for messages.

    Returns:
        The args; ``tie_word_embeddings`` is False until the loader sees no ``output.weight``.
    """
    common = gguf_common_args(metadata, ARCH, source)
    a = metadata.get("general.architecture")
    a = a if isinstance(a, str) and a else ARCH
    # Not written by llama.cpp's converter (its llama arch has no window); Mistral v0.1-style
    # files that carry it are run with it rather than silently without.
    window = meta_int(metadata, f"{a}.attention.sliding_window", source, 0)
    return ModelArgs.from_dict({**common, "sliding_window": window or None})


def args_from_hf(config: dict[str, Any], *, source: str = "<config.json>") -> ModelArgs:
    """ModelArgs from an HF ``config.json`` dict.

    Args:
        config: parsed config.json.
        source: file path for messages.

    Returns:
        The args.

    Raises:
        CorruptFile: a required key is missing.
        NotImplementedFeature: attention/MLP biases, a non-SiLU activation, partial rotary,
            or an active sliding window.
    """
    if config.get("model_type") == "mistral" and "sliding_window" not in config:
        config = {**config, "sliding_window": 4096}  # transformers' MistralConfig default
    args = hf_args(ModelArgs, config, source)
    if args.attention_bias or args.mlp_bias:
        raise NotImplementedFeature(
            f"[{TAG}] {source}: keys attention_bias/mlp_bias: projection biases are not supported"
        )
    check_window(args.sliding_window, source)
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
        source_format: "gguf" or "hf" (decides the RoPE pairing).
        rope_freq_factors: GGUF ``rope_freqs.weight`` divisors, or None.
        source: file path for messages.

    Returns:
        Dict of ModelConfig fields.
    """
    if source_format not in ("gguf", "hf"):
        raise InvalidArgument(f"[{TAG}] source_format {source_format!r}, expected 'gguf' or 'hf'")
    cfg = llama_like_config(
        args,
        rope_neox=source_format == "hf",
        qkv_bias=False,
        freq_factors=rope_freq_factors,
        source=source,
    )
    if args.sliding_window:  # Mistral v0.1: every layer attends to its last sliding_window keys
        cfg["layer_window"] = [int(args.sliding_window)] * args.num_hidden_layers
    return cfg
