"""Phi-3 family (GGUF ``phi3``; HF ``phi3`` / ``Phi3ForCausalLM``: Phi-3, Phi-3.5-mini, Phi-4-mini).

Decoder: Llama's block (RMSNorm, GQA attention, SiLU-gated MLP, no biases) plus

* fused projections: HF ``qkv_proj`` / GGUF ``attn_qkv`` (rows q, k, v) and HF ``gate_up_proj`` /
  GGUF ``ffn_up`` (rows gate, then up; GGUF has no ``ffn_gate``). :func:`split_fused` names their
  row ranges; the loader hands each range to the engine as ``attn_q/k/v`` / ``ffn_gate/up``, a
  view of the fused tensor's bytes (zero copy). Both are canonically ``blk.N.attn_qkv.weight`` and
  ``blk.N.ffn_up.weight`` (fused) before the split.
* partial rotary: RoPE turns the first ``rope_dim`` features of each head (HF:
  ``int(head_dim * partial_rotary_factor)``; GGUF: ``rope.dimension_count``). Neither format
  permutes q/k rows, so pairs are (i, i + rope_dim/2) in both (``rope_neox``).
* longrope (HF ``rope_scaling`` / ``rope_parameters`` of type ``longrope``, old names ``su`` and
  ``yarn`` as transformers' Phi3Config maps them; GGUF tensors ``rope_factors_long.weight`` /
  ``rope_factors_short.weight``): inverse frequency i is ``1 / (factor_i * theta^(2i/rope_dim))``
  and the rotated features are scaled by the attention factor (``rope_mscale``). HF re-picks the
  long or short factors per forward call (long iff the sequence is longer than
  ``original_max_position_embeddings``); metallic follows llama.cpp and picks once per load: long
  iff the ``context_length`` given to ``metallic.load`` exceeds the original. ``native_config``
  therefore returns the short frequencies plus a :data:`~metallic.families.LONG_CONTEXT` entry
  that ``metallic.load`` resolves. A GGUF ``rope_freqs.weight`` replaces both (llama.cpp's rule).
* sliding window: HF applies ``sliding_window`` (keys t-W+1..t) on every layer; llama.cpp disables
  phi3's window, so GGUF files run without one, as there.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from ..errors import CorruptFile, InvalidArgument, NotImplementedFeature, ShapeMismatch
from . import LONG_CONTEXT
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
from .switches import FULL, check_window, hf_rope

ARCH = "phi3"
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.qkv_proj.weight": "attn_qkv.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_up_proj.weight": "ffn_up.weight",  # fused gate + up, as llama.cpp's GGUF names it
    "mlp.down_proj.weight": "ffn_down.weight",
}
LONGROPE_KINDS = ("longrope", "su", "yarn")  # transformers' Phi3Config maps su / yarn to longrope
ORIGINAL_DEFAULT = 4096  # Phi3Config's original_max_position_embeddings default
# GGUF tensors read into the args (see args_from_gguf); the loader keeps them out of the weights.
GGUF_ARG_TENSORS = ("rope_factors_long.weight", "rope_factors_short.weight")


@dataclasses.dataclass
class ModelArgs(LlamaLikeArgs):
    """Phi-3 hyper-parameters, named like HF ``config.json`` keys (the shared ones: see
    :class:`~metallic.families.base.LlamaLikeArgs`).

    Attributes:
        max_position_embeddings: context length the model was extended to.
        original_max_position_embeddings: pretraining context length (longrope's switch point).
        rope_scaling: (inherited) normalized longrope dict (``long_factor``, ``short_factor``,
            ``factor``, ``attention_factor``), another HF scaling dict (linear), or None.
        partial_rotary_factor: fraction of head_dim that RoPE turns (HF).
        rope_dim: rotated features per head (GGUF ``rope.dimension_count``); None: from
            partial_rotary_factor.
        attention_bias: biases on the projections (unsupported when True).
        sliding_window: every layer's window (HF) or None.
        hidden_act: MLP activation ("silu").
        model_type: HF model_type.
    """

    max_position_embeddings: int = 4096
    original_max_position_embeddings: int = ORIGINAL_DEFAULT
    partial_rotary_factor: float = 1.0
    rope_dim: int | None = None
    attention_bias: bool = False
    sliding_window: int | None = None
    hidden_act: str = "silu"
    model_type: str = "phi3"


def args_from_gguf(
    metadata: dict[str, Any],
    *,
    source: str = "<gguf>",
    tensors: dict[str, np.ndarray] | None = None,
) -> ModelArgs:
    """ModelArgs from GGUF ``phi3.*`` metadata and the longrope factor tensors.

    Args:
        metadata: GGUF metadata (``GGUFFile.metadata``).
        source: file path for messages.
        tensors: the present :data:`GGUF_ARG_TENSORS` as 1-D float arrays (None: none).

    Returns:
        The args; ``tie_word_embeddings`` is False until the loader sees no ``output.weight``.
        ``sliding_window`` is None whatever the file says (llama.cpp disables phi3's window).

    Raises:
        CorruptFile: a missing or malformed key, or only one of the two factor tensors.
        NotImplementedFeature: linear rope scaling together with longrope factors.
    """
    a = metadata.get("general.architecture")
    a = a if isinstance(a, str) and a else ARCH
    common = gguf_common_args(metadata, ARCH, source, partial_rotary=True)
    ctx = common["max_position_embeddings"]
    orig_key = f"{a}.rope.scaling.original_context_length"
    tensors = tensors or {}
    long, short = (tensors.get(n) for n in GGUF_ARG_TENSORS)
    if (long is None) != (short is None):
        missing = GGUF_ARG_TENSORS[0 if long is None else 1]
        raise CorruptFile(f"[{TAG}] {source}: tensor {missing}: missing (the other is present)")
    if long is not None:
        if common["rope_scaling"] is not None:
            raise NotImplementedFeature(
                f"[{TAG}] {source}: key {a}.rope.scaling.type: scaling together with longrope "
                "factors is not supported"
            )
        common["rope_scaling"] = {
            "rope_type": "longrope",
            "long_factor": [float(x) for x in long],
            "short_factor": [float(x) for x in short],
            # llama.cpp's default when the converter wrote none: no scaling of cos / sin.
            "attention_factor": meta_float(metadata, f"{a}.rope.scaling.attn_factor", source, 1.0),
        }
    return ModelArgs.from_dict(
        {
            **common,
            "original_max_position_embeddings": meta_int(metadata, orig_key, source, ctx),
            "sliding_window": None,
        }
    )


def args_from_hf(config: dict[str, Any], *, source: str = "<config.json>") -> ModelArgs:
    """ModelArgs from an HF ``config.json`` dict (transformers 4 or 5 layout).

    ``original_max_position_embeddings``: the top-level key wins (transformers does the same), then
    the one inside the rope parameters, then Phi3Config's default 4096. ``partial_rotary_factor``:
    the one inside the rope parameters wins over the top-level key.

    Args:
        config: parsed config.json.
        source: file path for messages.

    Returns:
        The args (``rope_scaling`` normalized: see :func:`_hf_longrope`).

    Raises:
        CorruptFile: a required key is missing or malformed.
        NotImplementedFeature: projection biases, a non-SiLU activation, an unsupported rope
            scaling type.
    """
    theta, scaling = hf_rope(config, FULL, 10000.0, source)
    rp = config.get("rope_parameters")
    params = rp if isinstance(rp, dict) else (scaling or {})
    partial = params.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))
    original = config.get(
        "original_max_position_embeddings",
        (scaling or {}).get("original_max_position_embeddings", ORIGINAL_DEFAULT),
    )
    cfg = {k: v for k, v in config.items() if k not in ("partial_rotary_factor", "rope_dim")}
    cfg |= {"rope_theta": theta, "rope_scaling": _hf_longrope(scaling, source)}
    args = hf_args(ModelArgs, cfg, source)  # refuses partial rotary: checked here instead
    if not isinstance(partial, (int, float)) or isinstance(partial, bool) or not 0 < partial <= 1:
        raise CorruptFile(
            f"[{TAG}] {source}: key partial_rotary_factor: expected a number in (0, 1], "
            f"got {partial!r:.80}"
        )
    if not isinstance(original, int) or isinstance(original, bool) or original <= 0:
        raise CorruptFile(
            f"[{TAG}] {source}: key original_max_position_embeddings: expected a positive "
            f"integer, got {original!r:.80}"
        )
    if args.attention_bias:
        raise NotImplementedFeature(
            f"[{TAG}] {source}: key attention_bias: projection biases are not supported"
        )
    check_window(args.sliding_window, source)
    args.partial_rotary_factor = float(partial)
    args.original_max_position_embeddings = original
    return args


def _hf_longrope(scaling: dict[str, Any] | None, source: str) -> dict[str, Any] | None:
    """The rope scaling dict with longrope's spellings unified (``rope_type`` "longrope")."""
    if scaling is None:
        return None
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind in (None, "default"):
        return None
    if kind not in LONGROPE_KINDS:
        return dict(scaling)  # linear: base.rope_inv_freq knows it, and refuses the rest
    out = {"rope_type": "longrope"}
    for key in ("long_factor", "short_factor"):
        if key not in scaling:
            raise CorruptFile(f"[{TAG}] {source}: key rope_scaling.{key}: missing (longrope)")
        out[key] = scaling[key]
    for key in ("factor", "attention_factor"):
        if scaling.get(key) is not None:
            out[key] = scaling[key]
    return out


def canonical_name(hf_name: str) -> str | None:
    """Canonical name of an HF tensor (None for ignored buffers); fused projections keep their
    fused canonical names (``attn_qkv``, ``ffn_up``) until :func:`split_fused`.

    Args:
        hf_name: HF checkpoint tensor name.

    Returns:
        Canonical GGUF-style name, None to ignore, or the input when unknown.
    """
    return hf_to_canonical(hf_name, _LAYER_NAMES, HF_GLOBAL_NAMES)


def split_fused(
    name: str,
    shape: tuple[int, ...],
    config: dict[str, Any],
    *,
    source: str = "model",
    file_name: str | None = None,
) -> list[tuple[str, int, int]] | None:
    """The row ranges of a fused tensor, or None for a tensor that is not fused.

    Args:
        name: canonical name (``blk.N.attn_qkv.weight`` or ``blk.N.ffn_up.weight``: fused).
        shape: its numpy-order shape.
        config: the native config dict (row counts).
        source: file path for messages.
        file_name: the tensor's name in the file, for messages (default: ``name``).

    Returns:
        [(canonical part name, first row, rows)], covering every row once, in order.

    Raises:
        ShapeMismatch: the fused tensor is not 2-D with the rows and columns the config implies.
    """
    stem, _, suffix = name.rpartition(".")
    prefix, _, kind = stem.rpartition(".")
    if suffix != "weight" or not prefix.startswith("blk.") or kind not in ("attn_qkv", "ffn_up"):
        return None
    e, hd, ff = config["n_embd"], config["head_dim"], config["n_ff"]
    if kind == "attn_qkv":
        q, kv = config["n_head"] * hd, config["n_head_kv"] * hd
        rows = [("attn_q", q), ("attn_k", kv), ("attn_v", kv)]
    else:
        rows = [("ffn_gate", ff), ("ffn_up", ff)]
    want = (sum(r for _, r in rows), e)
    if tuple(shape) != want:
        shown = name if file_name in (None, name) else f"{file_name} ({name})"
        parts = " + ".join(f"{r} {p}" for p, r in rows)
        raise ShapeMismatch(
            f"[{TAG}] {source}: tensor {shown}: expected {want[0]}x{want[1]} (rows {parts}), "
            f"got {'x'.join(str(d) for d in shape)}"
        )
    out, first = [], 0
    for part, r in rows:
        out.append((f"{prefix}.{part}.weight", first, r))
        first += r
    return out


def native_config(
    args: ModelArgs,
    source_format: str,
    rope_freq_factors: np.ndarray | None = None,
    *,
    source: str = "model",
) -> dict[str, Any]:
    """Every native ``ModelConfig`` field, plus a :data:`LONG_CONTEXT` entry under longrope.

    Args:
        args: the model args (``tie_word_embeddings`` already resolved by the loader).
        source_format: "gguf" or "hf" (both pair RoPE dims NEOX-style for phi3).
        rope_freq_factors: GGUF ``rope_freqs.weight`` divisors (rope_dim/2), or None; they
            replace the longrope factors (llama.cpp's precedence).
        source: file path for messages.

    Returns:
        Dict of ModelConfig fields; ``rope_inv_freq`` holds the short factors' frequencies and
        ``LONG_CONTEXT`` = {"threshold": original context, "overrides": {"rope_inv_freq": long}}.

    Raises:
        CorruptFile: a rotary width, longrope factor list or attention factor out of range.
    """
    if source_format not in ("gguf", "hf"):
        raise InvalidArgument(f"[{TAG}] source_format {source_format!r}, expected 'gguf' or 'hf'")
    plain = dataclasses.replace(args, rope_scaling=None)  # RoPE is computed below
    cfg = llama_like_config(plain, rope_neox=True, qkv_bias=False, freq_factors=None, source=source)
    head_dim = cfg["head_dim"]
    rot = args.rope_dim
    if rot is None:
        rot = int(head_dim * args.partial_rotary_factor)
    if not 0 < rot <= head_dim or rot % 2:
        key = "rope.dimension_count" if source_format == "gguf" else "partial_rotary_factor"
        raise CorruptFile(
            f"[{TAG}] {source}: key {key}: expected an even rotary width in 2..{head_dim}, "
            f"got {rot}"
        )
    scaling = args.rope_scaling
    longrope = scaling is not None and scaling.get("rope_type") == "longrope"
    mscale, extra = 1.0, {}
    if longrope:
        mscale = _attention_factor(args, scaling, source)
    if longrope and rope_freq_factors is None:
        base = np.asarray(rope_inv_freq(rot, args.rope_theta, None, source=source))
        short = base / _factors(scaling, "short_factor", rot, source_format, source)
        long = base / _factors(scaling, "long_factor", rot, source_format, source)
        inv = [float(x) for x in short]
        overrides = {"rope_inv_freq": [float(x) for x in long]}
        extra = {LONG_CONTEXT: {"threshold": _original(args, source), "overrides": overrides}}
    else:
        kept = None if longrope else scaling
        inv = rope_inv_freq(rot, args.rope_theta, kept, rope_freq_factors, source=source)
    window = args.sliding_window
    cfg |= {
        "rope_dim": rot,
        "rope_inv_freq": inv,
        "rope_mscale": mscale,
        "layer_window": [int(window)] * args.num_hidden_layers if window else [],
    }
    return cfg | extra


def _factors(
    scaling: dict[str, Any], key: str, rot: int, source_format: str, source: str
) -> np.ndarray:
    v = scaling.get(key)
    ok = isinstance(v, list) and len(v) == rot // 2
    ok = ok and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0
        for x in v
    )
    if not ok:
        gguf_name = GGUF_ARG_TENSORS[0 if key == "long_factor" else 1]
        where = f"tensor {gguf_name}" if source_format == "gguf" else f"key rope_scaling.{key}"
        raise CorruptFile(
            f"[{TAG}] {source}: {where}: expected {rot // 2} finite positive factors "
            f"(rotary width {rot} / 2), got {v!r:.80}"
        )
    return np.asarray(v, dtype=np.float64)


def _original(args: ModelArgs, source: str) -> int:
    orig = args.original_max_position_embeddings
    if not isinstance(orig, int) or isinstance(orig, bool) or orig <= 0:
        raise CorruptFile(
            f"[{TAG}] {source}: key original_max_position_embeddings: expected a positive "
            f"integer, got {orig!r:.80}"
        )
    return orig


def _attention_factor(args: ModelArgs, scaling: dict[str, Any], source: str) -> float:
    """transformers' ``_compute_longrope_parameters``: ``attention_factor`` when given, else
    sqrt(1 + ln(factor) / ln(original)) with ``factor`` (default max_position / original) > 1,
    else 1."""
    given = scaling.get("attention_factor")
    if given is None:
        orig = _original(args, source)
        factor = scaling.get("factor") or args.max_position_embeddings / orig
        if not isinstance(factor, (int, float)) or not math.isfinite(factor):
            raise CorruptFile(
                f"[{TAG}] {source}: key rope_scaling.factor: expected a number, got {factor!r:.80}"
            )
        if factor <= 1.0:
            return 1.0
        if orig < 2:
            raise CorruptFile(
                f"[{TAG}] {source}: key original_max_position_embeddings: expected >= 2 for "
                f"longrope's attention factor, got {orig}"
            )
        given = math.sqrt(1.0 + math.log(factor) / math.log(orig))
    if (
        not isinstance(given, (int, float))
        or isinstance(given, bool)
        or not (math.isfinite(given) and given > 0)
    ):
        raise CorruptFile(
            f"[{TAG}] {source}: longrope attention_factor: expected a positive number, "
            f"got {given!r:.80}"
        )
    return float(given)
