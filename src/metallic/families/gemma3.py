"""Gemma 3 family (text decoder: GGUF ``gemma3``; HF ``gemma3_text`` / ``Gemma3ForCausalLM``, and
the language model of ``Gemma3ForConditionalGeneration`` checkpoints).

Decoder switches of the one plan: four RMSNorms per block (input, post-attention, pre- and
post-feed-forward: ``post_norms``), a per-head q/k RMSNorm (``qk_norm``), a GELU-tanh gated MLP,
embeddings scaled by sqrt(hidden), attention scale ``query_pre_attn_scalar ** -0.5``, and
interleaved sliding-window (local) and global layers with their own RoPE bases
(``layer_window``, ``rope_inv_freq_local``; rope scaling of the larger models applies to the
global layers only). HF computes every norm as ``x * (1 + w)`` on stored ``w``; llama.cpp's
converter stores ``1 + w`` in GGUF, so HF weights get ``norm_weight_offset = 1`` and GGUF none.
Neither format permutes q/k rows: RoPE pairs (i, i + head_dim/2) in both.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import numpy as np

from ..errors import InvalidArgument, NotImplementedFeature
from .base import (
    HF_GLOBAL_NAMES,
    TAG,
    LlamaLikeArgs,
    gguf_common_args,
    hf_args,
    hf_to_canonical,
    llama_like_config,
    meta_float,
    meta_int,
    rope_inv_freq,
)
from .switches import FULL, SLIDING, hf_layer_types, hf_rope, windows

ARCH = "gemma3"
# HF layer names: Gemma's post_attention_layernorm is the attention block's post-norm (in Llama
# it is the FFN's input norm), pre_feedforward_layernorm the FFN's input norm.
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
# Multimodal checkpoints keep the text model under a prefix; the vision tower is not ours.
_TEXT_PREFIX = re.compile(r"^(?:model\.language_model\.|language_model\.model\.)")
_VISION = (
    "vision_tower.",
    "model.vision_tower.",
    "multi_modal_projector.",
    "model.multi_modal_projector.",
)
_PATTERN = 6  # gemma3: every 6th layer global (llama.cpp and transformers' default)
_LOCAL_THETA = 10000.0


@dataclasses.dataclass(frozen=True)
class Variant:
    """What differs between Gemma generations (gemma2.py passes its own)."""

    arch: str = ARCH
    pattern: int = _PATTERN  # every pattern-th layer global
    qk_norm: bool = True
    default_theta: float = 1000000.0  # global RoPE base when the file names none
    local_theta: float | None = _LOCAL_THETA  # None: local layers use the global base
    big_layers: int = 62  # llama.cpp: this many layers -> scale by (hidden / heads) ** -0.5
    attn_softcap: float = 0.0  # llama.cpp's default when GGUF names none
    final_softcap: float = 0.0


GEMMA3 = Variant()


@dataclasses.dataclass
class ModelArgs(LlamaLikeArgs):
    """Gemma 3 hyper-parameters, named like HF ``config.json`` keys (the shared ones: see
    :class:`~metallic.families.base.LlamaLikeArgs`).

    Attributes:
        head_dim: per-head width.
        max_position_embeddings: trained context length.
        rope_theta: RoPE base of the global layers.
        rope_local_base_freq: RoPE base of the sliding-window layers.
        query_pre_attn_scalar: attention scores are scaled by its inverse square root.
        layer_window: per layer sliding window (0: global).
        final_logit_softcapping: > 0: logits -> cap * tanh(logit / cap); None: off.
        attn_logit_softcapping: likewise for attention scores.
        tie_word_embeddings: output projection reuses the token embedding.
        hidden_activation: MLP activation ("gelu_pytorch_tanh").
        model_type: HF model_type.
    """

    head_dim: int | None = 256
    max_position_embeddings: int = 131072
    rope_theta: float = 1000000.0
    rope_local_base_freq: float = _LOCAL_THETA
    query_pre_attn_scalar: float | None = None
    layer_window: list[int] = dataclasses.field(default_factory=list)
    final_logit_softcapping: float | None = None
    attn_logit_softcapping: float | None = None
    tie_word_embeddings: bool = True
    hidden_activation: str = "gelu_pytorch_tanh"
    model_type: str = "gemma3_text"


def args_from_gguf(
    metadata: dict[str, Any], *, source: str = "<gguf>", variant: Variant = GEMMA3
) -> ModelArgs:
    """ModelArgs from GGUF ``gemma3.*`` metadata (llama.cpp's conventions for what GGUF omits:
    the layer pattern, the local RoPE base, the attention scale rule).

    Args:
        metadata: GGUF metadata (``GGUFFile.metadata``).
        source: file path for messages.
        variant: the Gemma generation.

    Returns:
        The args; ``tie_word_embeddings`` is resolved by the loader.
    """
    a = metadata.get("general.architecture")
    a = a if isinstance(a, str) and a else variant.arch
    common = gguf_common_args(metadata, variant.arch, source)
    common["rope_theta"] = meta_float(
        metadata, f"{a}.rope.freq_base", source, variant.default_theta
    )
    n = common["num_hidden_layers"]
    types = [FULL if (i + 1) % variant.pattern == 0 else SLIDING for i in range(n)]
    window = meta_int(metadata, f"{a}.attention.sliding_window", source)
    local = variant.local_theta or common["rope_theta"]
    softcaps = {
        key: meta_float(metadata, f"{a}.{key}", source, default) or None
        for key, default in (
            ("final_logit_softcapping", variant.final_softcap),
            ("attn_logit_softcapping", variant.attn_softcap),
        )
    }
    scalar = None
    if n == variant.big_layers:
        scalar = common["hidden_size"] / common["num_attention_heads"]
    return ModelArgs.from_dict(
        {
            **common,
            **softcaps,
            "layer_window": windows(types, window, source),
            "rope_local_base_freq": meta_float(metadata, f"{a}.rope.freq_base_swa", source, local),
            "query_pre_attn_scalar": scalar,
            "model_type": variant.arch,
        }
    )


def args_from_hf(
    config: dict[str, Any], *, source: str = "<config.json>", variant: Variant = GEMMA3
) -> ModelArgs:
    """ModelArgs from an HF ``config.json`` (``gemma3_text``, or the ``text_config`` of a
    ``Gemma3ForConditionalGeneration`` checkpoint; transformers 4 or 5 layout).

    Args:
        config: parsed config.json.
        source: file path for messages.

    Returns:
        The args.

    Raises:
        CorruptFile: a required key is missing or malformed.
        NotImplementedFeature: an activation other than GELU-tanh.
    """
    if isinstance(config.get("text_config"), dict):
        config = {
            **config["text_config"],
            "tie_word_embeddings": config.get("tie_word_embeddings", True),
        }
    act = config.get("hidden_activation", config.get("hidden_act", "gelu_pytorch_tanh"))
    if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
        raise NotImplementedFeature(
            f"[{TAG}] {source}: key hidden_activation: {act!r}, expected 'gelu_pytorch_tanh'"
        )
    theta, scaling = hf_rope(config, FULL, variant.default_theta, source)
    local, _ = hf_rope(config, SLIDING, variant.local_theta or theta, source)
    cfg = {k: v for k, v in config.items() if k not in ("hidden_act", "layer_window")}
    cfg |= {"rope_theta": theta, "rope_scaling": scaling, "rope_local_base_freq": local}
    cfg["hidden_activation"] = act
    args = hf_args(ModelArgs, cfg, source)
    types = hf_layer_types(config, args.num_hidden_layers, variant.pattern, source)
    args.layer_window = windows(types, config.get("sliding_window"), source)
    return args


def canonical_name(hf_name: str) -> str | None:
    """Canonical name of an HF tensor (None for ignored buffers and the vision tower).

    Args:
        hf_name: HF checkpoint tensor name.

    Returns:
        Canonical GGUF-style name, None to ignore, or the input when unknown.
    """
    if hf_name.startswith(_VISION):
        return None
    name = _TEXT_PREFIX.sub("model.", hf_name)
    if name == "lm_head.weight" or name.startswith("model."):
        return hf_to_canonical(name, _LAYER_NAMES, HF_GLOBAL_NAMES)
    return hf_name


def native_config(
    args: ModelArgs,
    source_format: str,
    rope_freq_factors: np.ndarray | None = None,
    *,
    source: str = "model",
    variant: Variant = GEMMA3,
) -> dict[str, Any]:
    """Every native ``ModelConfig`` field.

    Args:
        args: the model args (``tie_word_embeddings`` already resolved by the loader).
        source_format: "gguf" (norms stored as 1 + w) or "hf" (w).
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
    head_dim = cfg["head_dim"]
    scalar = args.query_pre_attn_scalar or head_dim  # llama.cpp's rule when GGUF stores none
    if not scalar > 0:
        raise InvalidArgument(f"[{TAG}] {source}: key query_pre_attn_scalar: expected > 0")
    cfg |= {
        "activation": "GELU_TANH",
        "embed_scale": math.sqrt(args.hidden_size),
        "attn_scale": 1.0 / math.sqrt(scalar),
        "qk_norm": variant.qk_norm,
        "post_norms": True,
        "norm_weight_offset": 1.0 if source_format == "hf" else 0.0,
        "layer_window": list(args.layer_window),
        "rope_inv_freq_local": rope_inv_freq(
            head_dim, args.rope_local_base_freq, None, source=source
        ),
        "attn_softcap": float(args.attn_logit_softcapping or 0.0),
        "final_softcap": float(args.final_logit_softcapping or 0.0),
    }
    return cfg
