"""The tokenizer of a GGUF file, from its ``tokenizer.ggml.*`` metadata.

Private helper of :mod:`metallic.tokenizer` (keeps that module under the size limit).

Two ``tokenizer.ggml.model`` values are supported:

* ``"gpt2"`` (byte-level BPE), run natively (``native/tokenizer/bpe.h``). The pre-tokenizer is
  chosen from ``tokenizer.ggml.pre`` through :data:`PRE_ALIASES` → :data:`PRE_TOKENIZERS`: the
  split regexes llama.cpp applies for that name, applied one after another (each isolating its
  matches) before the byte-level mapping; native scanners implement them
  (tests/python/test_pretokenize.py checks them against HF ``tokenizers``' regex engine). A
  missing ``pre`` means ``"default"`` (as in llama.cpp); an unknown one raises
  :class:`~metallic.errors.UnsupportedFormat` instead of guessing, because a wrong split silently
  changes token ids. Tokens of type 3 (control) and 4 (user-defined) are markers, cut out of the
  text first, so chat markers such as ``<|im_start|>`` are always matched whole.
* ``"llama"`` (SentencePiece with scores and ``<0xXX>`` byte tokens: Llama 2, Mistral v0.1,
  Phi-3, Gemma): the native tokenizer, see :mod:`metallic._gguf_spm`. ``tokenizer.ggml.pre``
  plays no part. As in llama.cpp, missing ids default to unk 0 / bos 1 / eos 2, and BOS is
  added unless ``tokenizer.ggml.add_bos_token`` says otherwise.

Other models (``bert``, ``t5``, ``rwkv``, ...) raise :class:`~metallic.errors.NotImplementedFeature`.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import numpy as np

from . import errors
from ._native_tokenizer import NativeTokenizer

# ---------------------------------------------------------------- pre-tokenizers (GGUF "pre")
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = _LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")
# Sequential split regexes per family; the last one is the word-level split before byte-level BPE.
PRE_TOKENIZERS: dict[str, tuple[str, ...]] = {
    "default": (r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"),
    "gpt2": (_GPT2,),
    "smollm": (r"\p{N}", _GPT2),  # one digit per token, then GPT-2 words
    "llama3": (_LLAMA3,),
    "qwen2": (_QWEN2,),
}
# tokenizer.ggml.pre value -> family (names as llama.cpp's converter writes them).
PRE_ALIASES: dict[str, str] = {
    "default": "default",
    **dict.fromkeys(("gpt-2", "phi-2", "mpt", "olmo", "jais", "exaone4"), "gpt2"),
    **dict.fromkeys(
        ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"),
        "smollm",
    ),
    **dict.fromkeys(
        ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "lfm2", "dbrx"),
        "llama3",
    ),
    "smaug-bpe": "llama3",
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "stablelm2", "megrez"), "qwen2"),
}
_ADD_BOS_DEFAULT = {"llama3"}  # families whose converter default is "add BOS"
_IGNORE_MERGES = {"llama3"}  # a word that is itself a token is not split (llama3 BPE rule)

_CONTROL = 3  # GGUF token type of control tokens
_EOG_TEXTS = frozenset(
    {
        "<|endoftext|>",
        "<|im_end|>",
        "<|eot_id|>",
        "<|eom_id|>",
        "<end_of_turn>",
        "<|end|>",
        "<|return|>",
        "<|call|>",
        "<EOT>",
        "<|endofturn|>",
        "</s>",
    }
)
_MAX_TOKEN_TYPE = 6  # GGUF token types are 0..6


def corrupt(key: str, expected: str, got: object) -> errors.CorruptFile:
    """``CorruptFile("[tokenizer] <key>: expected <expected>, got <got>")``."""
    return errors.CorruptFile(f"[tokenizer] {key}: expected {expected}, got {got}")


def token_id(meta: dict, key: str, n_vocab: int, source: str) -> int | None:
    """``meta[key]`` checked to be a token id in ``[0, n_vocab)``; None when absent."""
    value = scalar(meta.get(key))
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n_vocab:
        raise corrupt(f"{source}: {key}", f"a token id in [0, {n_vocab})", repr(value))
    return value


def scalar(value: object) -> object:
    """Numpy scalars (``np.uint32``, ``np.bool_``) from a GGUF reader as Python values."""
    return value.item() if hasattr(value, "item") and getattr(value, "ndim", 1) == 0 else value


def as_list(value: object, key: str) -> list:
    if hasattr(value, "tolist"):  # numpy arrays from a GGUF reader
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise corrupt(key, "an array", type(value).__name__)
    return list(value)


@dataclasses.dataclass(frozen=True)
class GgufVocab:
    """What :func:`build_gguf_vocab` returns (fields as in ``Tokenizer.__init__``)."""

    hf: NativeTokenizer
    bos_id: int | None
    eos_id: int | None
    eos_ids: frozenset[int]
    add_bos: bool
    add_eos: bool
    chat_template: str | None


def build_gguf_vocab(metadata: dict[str, Any], source: str) -> GgufVocab:
    """Build the tokenizer and special-token facts from GGUF metadata.

    Args:
        metadata: GGUF key -> value (arrays as lists or numpy arrays).
        source: the file path, for messages.

    Raises:
        errors.InvalidArgument: ``metadata`` is not a dict.
        errors.CorruptFile: missing or inconsistent keys, unknown merge tokens, bad ids.
        errors.UnsupportedFormat: an unknown ``tokenizer.ggml.pre`` (byte-level BPE).
        errors.NotImplementedFeature: a tokenizer model other than ``gpt2`` / ``llama``.
    """
    if not isinstance(metadata, dict):
        raise errors.InvalidArgument(
            f"[tokenizer] {source}: expected a metadata dict, got {type(metadata).__name__}"
        )
    kind = metadata.get("tokenizer.ggml.model")
    if kind is None:
        raise corrupt(f"{source}: tokenizer.ggml.model", "a tokenizer model name", "none")
    if kind == "llama":
        # Imported here: _gguf_spm imports this module's helpers at its top.
        from ._gguf_spm import SPM_DEFAULT_IDS, build_sentencepiece

        hf, types = build_sentencepiece(metadata, source)
        add_bos_default, default_ids = True, SPM_DEFAULT_IDS
    elif kind == "gpt2":
        pre_name = metadata.get("tokenizer.ggml.pre", "default")
        family = PRE_ALIASES.get(pre_name) if isinstance(pre_name, str) else None
        if family is None:
            raise errors.UnsupportedFormat(
                f"[tokenizer] {source}: tokenizer.ggml.pre: expected one of "
                f"{sorted(PRE_ALIASES)}, got {pre_name!r}"
            )
        hf, types = _build_byte_level_bpe(metadata, source, family)
        add_bos_default, default_ids = family in _ADD_BOS_DEFAULT, {}
    else:
        raise errors.NotImplementedFeature(
            f"[tokenizer] {source}: tokenizer.ggml.model: expected 'gpt2' (byte-level BPE) or "
            f"'llama' (SentencePiece), got {kind!r}; 'bert', 't5', 'rwkv' are not supported yet"
        )
    n_vocab = len(types)
    names = ("bos", "eos", "eot", "eom")
    ids = {k: token_id(metadata, f"tokenizer.ggml.{k}_token_id", n_vocab, source) for k in names}
    for k in ("bos", "eos"):
        if ids[k] is None and default_ids.get(k, n_vocab) < n_vocab:
            ids[k] = default_ids[k]
    add_bos = scalar(metadata.get("tokenizer.ggml.add_bos_token", add_bos_default))
    add_eos = scalar(metadata.get("tokenizer.ggml.add_eos_token", False))
    for key, flag, tid in (("add_bos", add_bos, ids["bos"]), ("add_eos", add_eos, ids["eos"])):
        if not isinstance(flag, bool):
            raise corrupt(f"{source}: tokenizer.ggml.{key}_token", "a bool", repr(flag))
        if flag and tid is None:
            raise corrupt(f"{source}: tokenizer.ggml.{key[4:]}_token_id", "an id", "none")
    template = metadata.get("tokenizer.chat_template")
    if template is not None and not isinstance(template, str):
        raise corrupt(f"{source}: tokenizer.chat_template", "a string", type(template))
    eos = set(ids[k] for k in ("eos", "eot", "eom") if ids[k] is not None)
    # Extra end-of-generation ids, as llama.cpp derives them: control tokens whose text is a
    # known end-of-turn / end-of-text marker also stop generation (SmolLM2's <|endoftext|>).
    tokens = metadata.get("tokenizer.ggml.tokens")
    for tid in np.flatnonzero(types == _CONTROL).tolist():
        if tokens[tid] in _EOG_TEXTS:
            eos.add(tid)
    return GgufVocab(
        hf,
        bos_id=ids["bos"],
        eos_id=ids["eos"] if ids["eos"] is not None else ids["eot"],
        eos_ids=frozenset(eos),
        add_bos=add_bos,
        add_eos=add_eos,
        chat_template=template,
    )


def per_token_array(raw: object, key: str, expected: str, n_vocab: int) -> tuple[Any, np.ndarray]:
    """``raw`` (a list or numpy array) checked to have ``n_vocab`` entries (else CorruptFile
    naming ``key``, ``expected``). Returns (raw as a list or array, it as an ndarray; object
    dtype when ragged), for the caller to check the dtype and values."""
    if not isinstance(raw, np.ndarray):
        raw = as_list(raw, key)
    if len(raw) != n_vocab:
        raise corrupt(key, expected, len(raw))
    try:
        return raw, np.asarray(raw)
    except ValueError:  # ragged nested lists
        return raw, np.asarray(raw, dtype=object)


def read_token_table(meta: dict[str, Any], source: str) -> tuple[list[str], np.ndarray]:
    """``tokenizer.ggml.tokens`` / ``.token_type`` checked. Returns (tokens, types as uint8)."""
    key = f"{source}: tokenizer.ggml"
    if "tokenizer.ggml.tokens" not in meta:
        raise corrupt(f"{key}.tokens", "an array", "none")
    tokens = as_list(meta["tokenizer.ggml.tokens"], f"{key}.tokens")
    if not tokens or not all(type(t) is str for t in tokens):
        raise corrupt(f"{key}.tokens", "a non-empty array of strings", "other values")
    n_vocab = len(tokens)
    raw = meta.get("tokenizer.ggml.token_type")
    if raw is None:
        return tokens, np.ones(n_vocab, np.uint8)
    raw, types = per_token_array(raw, f"{key}.token_type", f"{n_vocab} entries", n_vocab)
    if types.ndim != 1 or types.dtype.kind not in "iu":
        bad = [t for t in raw if isinstance(t, bool) or not isinstance(t, numbers.Integral)]
        raise corrupt(f"{key}.token_type", "integers in 0..6", repr(bad[:4] or raw[:4]))
    out_of_range = (types < 0) | (types > _MAX_TOKEN_TYPE)
    if out_of_range.any():
        bad = sorted(set(types[out_of_range].tolist()))
        raise corrupt(f"{key}.token_type", "integers in 0..6", repr(bad[:4]))
    return tokens, types.astype(np.uint8)


def _build_byte_level_bpe(
    meta: dict[str, Any], source: str, family: str
) -> tuple[NativeTokenizer, np.ndarray]:
    r"""Byte-level BPE from GGUF tokens / merges / token types, run natively (the split of
    :data:`PRE_TOKENIZERS`\ [family] is hand-written in ``native/tokenizer/pretokenize.cpp``).
    Returns (tokenizer, types)."""
    from . import _core

    key = f"{source}: tokenizer.ggml"
    tokens, types = read_token_table(meta, source)
    if "tokenizer.ggml.merges" not in meta:
        raise corrupt(f"{key}.merges", "an array", "none")
    merges = as_list(meta["tokenizer.ggml.merges"], f"{key}.merges")
    if not all(type(m) is str for m in merges):
        i = next(i for i, m in enumerate(merges) if type(m) is not str)
        raise corrupt(
            f"{key}.merges[{i}]", "'left right' with both and their join in tokens", repr(merges[i])
        )
    native = _core.BpeTokenizer(tokens, types, merges, family, family in _IGNORE_MERGES, source)
    return NativeTokenizer(native, types, strip_first_space=False), types
