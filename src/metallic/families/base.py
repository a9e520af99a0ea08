"""Shared pieces of the model families: args from dicts, RoPE frequencies, name tables, checks.

A family module (``llama.py``, ``qwen2.py``) maps its checkpoint formats onto the canonical
GGUF-style weight names and the native ``ModelConfig`` fields (docs/CONTRACTS.md section 1); the
helpers here read GGUF metadata with type checks, compute RoPE inverse frequencies (plain,
"linear", "llama3", GGUF ``rope_freqs.weight`` divisors), and check a weight table against the
shapes the config implies. Messages are tagged ``[open_model]`` and name the source file.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import numpy as np

from ..dtypes import SUPPORTED, DType
from ..errors import (
    CorruptFile,
    NotImplementedFeature,
    ShapeMismatch,
    UnsupportedArchitecture,
    UnsupportedDType,
)
from .rope import rope_inv_freq
from .validate import check_field_types, check_sizes

__all__ = ["rope_inv_freq"]  # re-exported: families and tests import it from here

TAG = "open_model"
FLOAT_DTYPES = frozenset({DType.F32, DType.F16, DType.BF16})

# HF tensor names (Llama-style checkpoints) -> canonical names. Per-layer names are relative to
# "model.layers.{i}.".
HF_GLOBAL_NAMES: dict[str, str] = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
HF_LAYER_NAMES: dict[str, str] = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
HF_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # stray buffers older exports saved
GGUF_IGNORED = frozenset({"rope_freqs.weight"})  # consumed into rope_inv_freq
_HF_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")


@dataclasses.dataclass
class BaseModelArgs:
    """Base of every family's ``ModelArgs`` (fields named like config.json keys)."""

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> Any:
        """Build from a config dict, dropping keys the dataclass does not declare.

        Args:
            params: config.json contents (or GGUF-derived values under the same names).

        Returns:
            An instance of ``cls``.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in params.items() if k in names})


@dataclasses.dataclass
class LlamaLikeArgs(BaseModelArgs):
    """The hyper-parameters every Llama-like family shares (a family subclasses it, overriding
    defaults and adding its own fields).

    Attributes:
        hidden_size: model width (n_embd).
        num_hidden_layers: decoder blocks.
        intermediate_size: MLP width (n_ff).
        num_attention_heads: query heads.
        rms_norm_eps: RMSNorm epsilon.
        vocab_size: rows of the embedding.
        num_key_value_heads: KV heads (GQA); None means num_attention_heads.
        head_dim: per-head width; None means hidden_size / num_attention_heads.
        max_position_embeddings: trained context length.
        rope_theta: RoPE base.
        rope_scaling: HF rope_scaling dict or None.
        tie_word_embeddings: output projection reuses the token embedding.
    """

    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    rms_norm_eps: float
    vocab_size: int
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads


# ---------------------------------------------------------------------------- name mapping


def hf_to_canonical(
    name: str,
    layer_names: dict[str, str] | None = None,
    global_names: dict[str, str] | None = None,
) -> str | None:
    """Canonical name of an HF tensor.

    Args:
        name: HF checkpoint tensor name.
        layer_names: the family's per-layer table (default: Llama's ``HF_LAYER_NAMES``).
        global_names: the family's global table (default: ``HF_GLOBAL_NAMES``).

    Returns:
        The canonical name; None for ignored buffers (``rotary_emb.inv_freq``); the name itself
        when it is not a known HF name (the tensor check then reports it as unexpected).
    """
    layers = HF_LAYER_NAMES if layer_names is None else layer_names
    globals_ = HF_GLOBAL_NAMES if global_names is None else global_names
    if name.endswith(HF_IGNORED_SUFFIXES):
        return None
    if name in globals_:
        return globals_[name]
    m = _HF_LAYER.fullmatch(name)
    if m and m.group(2) in layers:
        return f"blk.{int(m.group(1))}.{layers[m.group(2)]}"
    return name


def hf_args(cls: type, config: dict[str, Any], source: str) -> Any:
    """ModelArgs from an HF config with the checks every Llama-like family shares.

    Args:
        cls: the family's ModelArgs dataclass.
        config: parsed config.json.
        source: file path for messages.

    Returns:
        An instance of ``cls``.

    Raises:
        CorruptFile: a required key is missing.
        NotImplementedFeature: a non-SiLU activation or partial rotary embeddings.
    """
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [k for k in required if k not in config]
    if missing:
        raise CorruptFile(f"[{TAG}] {source}: missing config keys {', '.join(missing)}")
    if config.get("hidden_act", "silu") != "silu":
        raise NotImplementedFeature(
            f"[{TAG}] {source}: key hidden_act: {config['hidden_act']!r}, expected 'silu'"
        )
    if config.get("partial_rotary_factor", 1.0) != 1.0:
        raise NotImplementedFeature(f"[{TAG}] {source}: key partial_rotary_factor: not supported")
    args = cls.from_dict(config)
    check_field_types(args, source)
    return args


# ---------------------------------------------------------------------------- GGUF metadata


def meta_int(md: dict[str, Any], key: str, source: str, default: int | None = None) -> int:
    """An integer GGUF metadata value.

    Args:
        md: GGUF metadata.
        key: the key.
        source: file path for messages.
        default: value when absent; None makes the key required.

    Returns:
        The value.

    Raises:
        CorruptFile: missing required key or a non-integer value.
        NotImplementedFeature: a per-layer array where one number is expected.
    """
    if key not in md:
        if default is None:
            raise CorruptFile(f"[{TAG}] {source}: missing metadata key {key}")
        return default
    v = md[key]
    if isinstance(v, (np.ndarray, list)):
        raise NotImplementedFeature(
            f"[{TAG}] {source}: key {key}: per-layer values are not supported, expected one integer"
        )
    if not isinstance(v, int) or isinstance(v, bool):
        raise CorruptFile(f"[{TAG}] {source}: key {key}: expected an integer, got {v!r}")
    return v


def meta_float(md: dict[str, Any], key: str, source: str, default: float | None = None) -> float:
    """A numeric GGUF metadata value as float (same rules as :func:`meta_int`).

    Args:
        md: GGUF metadata.
        key: the key.
        source: file path for messages.
        default: value when absent; None makes the key required.

    Returns:
        The value.
    """
    if key not in md:
        if default is None:
            raise CorruptFile(f"[{TAG}] {source}: missing metadata key {key}")
        return default
    v = md[key]
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        raise CorruptFile(f"[{TAG}] {source}: key {key}: expected a finite number, got {v!r}")
    return float(v)


def gguf_common_args(
    md: dict[str, Any], arch: str, source: str, *, partial_rotary: bool = False
) -> dict[str, Any]:
    """The config.json-named values every Llama-like GGUF architecture stores.

    Args:
        md: GGUF metadata.
        arch: the family's name, the key prefix when ``general.architecture`` is absent.
        source: file path for messages.
        partial_rotary: the family rotates part of each head (phi3): ``rope.dimension_count``
            is returned as ``rope_dim``; otherwise a count other than head_dim is refused.

    Returns:
        Dict with hidden_size, num_hidden_layers, intermediate_size, num_attention_heads,
        num_key_value_heads, head_dim, rms_norm_eps, max_position_embeddings, rope_theta,
        rope_scaling and vocab_size (and rope_dim with ``partial_rotary``).
    """
    a = md.get("general.architecture")
    a = a if isinstance(a, str) and a else arch  # key prefix (an alias keeps its own)
    heads = meta_int(md, f"{a}.attention.head_count", source)
    hidden = meta_int(md, f"{a}.embedding_length", source)
    head_dim = meta_int(md, f"{a}.attention.key_length", source, 0) or None
    v_len = meta_int(md, f"{a}.attention.value_length", source, head_dim or 0) or None
    if v_len != head_dim:
        raise NotImplementedFeature(
            f"[{TAG}] {source}: key {a}.attention.value_length: {v_len} != key_length {head_dim}"
        )
    hd = head_dim or (hidden // heads if heads > 0 else 0)
    rot = meta_int(md, f"{a}.rope.dimension_count", source, hd)
    if rot != hd and not partial_rotary:
        raise NotImplementedFeature(
            f"[{TAG}] {source}: key {a}.rope.dimension_count: partial rotary ({rot} of {hd} "
            "dims) is not supported"
        )
    vocab = md.get(f"{a}.vocab_size")
    if vocab is None:
        tokens = md.get("tokenizer.ggml.tokens")
        if not isinstance(tokens, list):
            raise CorruptFile(
                f"[{TAG}] {source}: missing metadata key {a}.vocab_size (and tokenizer.ggml.tokens)"
            )
        vocab = len(tokens)
    else:
        vocab = meta_int(md, f"{a}.vocab_size", source)
    extra = {"rope_dim": rot} if partial_rotary else {}
    return {
        **extra,
        "hidden_size": hidden,
        "num_hidden_layers": meta_int(md, f"{a}.block_count", source),
        "intermediate_size": meta_int(md, f"{a}.feed_forward_length", source),
        "num_attention_heads": heads,
        "num_key_value_heads": meta_int(md, f"{a}.attention.head_count_kv", source, heads),
        "head_dim": head_dim,
        "rms_norm_eps": meta_float(md, f"{a}.attention.layer_norm_rms_epsilon", source),
        "max_position_embeddings": meta_int(md, f"{a}.context_length", source),
        "rope_theta": meta_float(md, f"{a}.rope.freq_base", source, 10000.0),
        "rope_scaling": _gguf_rope_scaling(md, a, source),
        "vocab_size": vocab,
    }


def _gguf_rope_scaling(md: dict[str, Any], a: str, source: str) -> dict[str, Any] | None:
    kind = md.get(f"{a}.rope.scaling.type")
    if kind is None and f"{a}.rope.scale_linear" in md:  # older files
        return {"rope_type": "linear", "factor": meta_float(md, f"{a}.rope.scale_linear", source)}
    if kind is None or kind == "none":
        return None
    if kind == "linear":
        return {"rope_type": "linear", "factor": meta_float(md, f"{a}.rope.scaling.factor", source)}
    raise NotImplementedFeature(
        f"[{TAG}] {source}: key {a}.rope.scaling.type: {kind!r} is not supported "
        "(expected none or linear)"
    )


# ---------------------------------------------------------------------------- config checks


def llama_like_config(
    args: Any,
    *,
    rope_neox: bool,
    qkv_bias: bool,
    freq_factors: np.ndarray | None,
    source: str,
) -> dict[str, Any]:
    """Every ``ModelConfig`` field for a Llama-like ``ModelArgs``, validated.

    Args:
        args: a ModelArgs with hidden_size, num_hidden_layers, intermediate_size,
            num_attention_heads, num_key_value_heads, head_dim, rms_norm_eps, rope_theta,
            rope_scaling, vocab_size, max_position_embeddings, tie_word_embeddings.
        rope_neox: True for "rotate halves" pairing, False for interleaved pairs.
        qkv_bias: q/k/v projections carry biases.
        freq_factors: GGUF ``rope_freqs.weight`` values or None.
        source: file path for messages.

    Returns:
        Dict of ModelConfig fields; ``activation`` is the ``_core.Activation`` member name.
    """
    check_sizes(args, source)
    heads, hidden = args.num_attention_heads, args.hidden_size
    kv = args.num_key_value_heads if args.num_key_value_heads is not None else heads
    if kv <= 0 or heads % kv:
        raise CorruptFile(
            f"[{TAG}] {source}: key num_key_value_heads: expected a divisor of "
            f"num_attention_heads {heads}, got {kv}"
        )
    head_dim = args.head_dim
    if head_dim is None:
        if hidden % heads:
            raise CorruptFile(
                f"[{TAG}] {source}: key num_attention_heads: {heads} does not divide "
                f"hidden_size {hidden} (and no head_dim given)"
            )
        head_dim = hidden // heads
    if not isinstance(head_dim, int) or head_dim <= 0 or head_dim % 2:
        raise CorruptFile(f"[{TAG}] {source}: key head_dim: expected a positive even integer")
    inv = rope_inv_freq(head_dim, args.rope_theta, args.rope_scaling, freq_factors, source=source)
    return {
        "n_vocab": args.vocab_size,
        "n_embd": hidden,
        "n_layer": args.num_hidden_layers,
        "n_head": heads,
        "n_head_kv": kv,
        "head_dim": head_dim,
        "n_ff": args.intermediate_size,
        "rms_eps": float(args.rms_norm_eps),
        "rope_neox": rope_neox,
        "rope_inv_freq": inv,
        "attn_scale": 1.0 / math.sqrt(head_dim),
        "qkv_bias": qkv_bias,
        "tied_embeddings": bool(args.tie_word_embeddings),
        "activation": "SILU",
        "embed_scale": 1.0,
    }


def expected_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Canonical weight name -> numpy-order shape implied by a config (CONTRACTS.md table).

    Args:
        cfg: the native config dict.

    Returns:
        Every tensor the decoder needs.
    """
    e, hd, ff, v = cfg["n_embd"], cfg["head_dim"], cfg["n_ff"], cfg["n_vocab"]
    q, kv = cfg["n_head"] * hd, cfg["n_head_kv"] * hd
    out: dict[str, tuple[int, ...]] = {"token_embd.weight": (v, e), "output_norm.weight": (e,)}
    if not cfg["tied_embeddings"]:
        out["output.weight"] = (v, e)
    for i in range(cfg["n_layer"]):
        b = f"blk.{i}."
        out[b + "attn_norm.weight"] = (e,)
        out[b + "attn_q.weight"] = (q, e)
        out[b + "attn_k.weight"] = (kv, e)
        out[b + "attn_v.weight"] = (kv, e)
        if cfg["qkv_bias"]:
            out[b + "attn_q.bias"] = (q,)
            out[b + "attn_k.bias"] = (kv,)
            out[b + "attn_v.bias"] = (kv,)
        out[b + "attn_output.weight"] = (e, q)
        if cfg.get("qk_norm"):
            out[b + "attn_q_norm.weight"] = (hd,)
            out[b + "attn_k_norm.weight"] = (hd,)
        if cfg.get("post_norms"):
            out[b + "post_attention_norm.weight"] = (e,)
            out[b + "post_ffw_norm.weight"] = (e,)
        out[b + "ffn_norm.weight"] = (e,)
        out[b + "ffn_gate.weight"] = (ff, e)
        out[b + "ffn_up.weight"] = (ff, e)
        out[b + "ffn_down.weight"] = (e, ff)
    return out


def check_tensors(
    cfg: dict[str, Any], tensors: dict[str, tuple[DType, tuple[int, ...]]], arch: str, source: str
) -> None:
    """Check a canonical weight table against a config.

    Args:
        cfg: the native config dict.
        tensors: canonical name -> (dtype, numpy-order shape), ignored tensors removed.
        arch: family name for messages.
        source: file path for messages.

    Raises:
        CorruptFile: a required tensor is missing.
        ShapeMismatch: a tensor's shape differs from the config's.
        UnsupportedDType: a dtype the engine cannot compute with, or a quantized norm/bias.
        UnsupportedArchitecture: a tensor the architecture does not use (an unsupported variant).
    """
    if cfg["n_layer"] > len(tensors):  # each layer needs 9+ tensors; also bounds the table below
        raise CorruptFile(
            f"[{TAG}] {source}: config has {cfg['n_layer']} layers but the file holds only "
            f"{len(tensors)} tensors"
        )
    want = expected_shapes(cfg)
    for name in tensors:
        if name not in want:
            raise UnsupportedArchitecture(
                f"[{TAG}] {source}: tensor {name} is not used by architecture {arch} "
                "(unsupported variant or config mismatch)"
            )
    for name, shape in want.items():
        if name not in tensors:
            raise CorruptFile(f"[{TAG}] {source}: tensor {name}: missing (architecture {arch})")
        dtype, got = tensors[name]
        if tuple(got) != shape:
            raise ShapeMismatch(
                f"[{TAG}] {source}: tensor {name}: expected {_fmt(shape)}, got {_fmt(got)}"
            )
        if dtype not in SUPPORTED or (len(shape) == 1 and dtype not in FLOAT_DTYPES):
            raise UnsupportedDType(
                f"[{TAG}] {source}: tensor {name}: dtype {DType(dtype).name} is not supported here"
            )


def _fmt(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)
