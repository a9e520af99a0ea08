"""SentencePiece vocabularies (``tokenizer.ggml.model == "llama"``): the native tokenizer.

Private helper of :mod:`metallic._gguf_vocab` (Llama 2, Mistral v0.1, Phi-3, Gemma ship these).

The tokenizer is llama.cpp's SPM algorithm in C++ (``native/tokenizer/spm.{h,cpp}``, where each
step is written down): marker tokens (control, unknown, user-defined) cut out first, longest
first; ``" "`` → ``▁`` with a ``▁`` prepended after the start and after each marker when
``tokenizer.ggml.add_space_prefix`` (default true); then the adjacent pair whose join is the
best-scoring token merges, leftmost on ties; leftovers become ``<0xXX>`` byte tokens, or
``<unk>`` (runs fused) in a vocabulary without the 256 byte tokens. It is built from the token
table in tens of milliseconds (the equivalent HF ``tokenizers`` object took 2.6 s to build for
Gemma's 262 144 tokens, and its merge list cost memory for the model's lifetime).

Decoding maps each id to its bytes (``▁`` → ``" "``, ``<0xXX>`` → the byte, markers as their
text), decodes UTF-8 (an unfinished character becomes U+FFFD) and, with the space prefix, drops
the first leading space, exactly as the streaming detokenizer does (see
:class:`metallic._native_tokenizer.NativeTokenizer`).

DEBT: llama.cpp's Phi-3 rule (strip spaces after special tokens, chosen by model name) and
per-token lstrip/rstrip attributes are not applied.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._gguf_vocab import corrupt, per_token_array, read_token_table, scalar
from ._native_tokenizer import NativeTokenizer

SPACE = "\u2581"  # ▁, SentencePiece's visible space
# llama.cpp's defaults for a SentencePiece vocabulary whose file does not name these ids.
SPM_DEFAULT_IDS = {"unknown": 0, "bos": 1, "eos": 2}


def build_sentencepiece(meta: dict[str, Any], source: str) -> tuple[NativeTokenizer, np.ndarray]:
    """The native SentencePiece tokenizer of ``meta``. Returns (tokenizer, token types).

    Raises:
        errors.CorruptFile: missing or malformed tokens / scores / token types, malformed or
            incomplete byte tokens, duplicate tokens, a bad ``unknown_token_id`` or
            ``add_space_prefix``.
    """
    from . import _core

    key = f"{source}: tokenizer.ggml"
    tokens, types = read_token_table(meta, source)
    n_vocab = len(tokens)
    scores = _read_scores(meta, f"{key}.scores", n_vocab)
    prefix = scalar(meta.get("tokenizer.ggml.add_space_prefix", True))
    if not isinstance(prefix, bool):
        raise corrupt(f"{key}.add_space_prefix", "a bool", repr(prefix))
    unk = scalar(meta.get("tokenizer.ggml.unknown_token_id", SPM_DEFAULT_IDS["unknown"]))
    if isinstance(unk, bool) or not isinstance(unk, int) or not 0 <= unk < n_vocab:
        raise corrupt(f"{key}.unknown_token_id", f"a token id in [0, {n_vocab})", repr(unk))
    native = _core.SpmTokenizer(tokens, scores, types, unk, prefix, source)
    return NativeTokenizer(native, types, strip_first_space=prefix), types


def _read_scores(meta: dict[str, Any], key: str, n_vocab: int) -> np.ndarray:
    raw = meta.get("tokenizer.ggml.scores")
    if raw is None:  # llama.cpp reads all-zero scores; merges would then be arbitrary
        raise corrupt(key, f"an array of {n_vocab} scores (SentencePiece merges by score)", "none")
    raw, scores = per_token_array(raw, key, f"{n_vocab} entries (one per token)", n_vocab)
    if scores.ndim == 1 and scores.dtype.kind in "iuf":
        scores = scores.astype(np.float32)
        bad = np.flatnonzero(~np.isfinite(scores))
        if bad.size == 0:
            return np.ascontiguousarray(scores)
        first = int(bad[0])
    else:
        numbers = (isinstance(s, (int, float)) and not isinstance(s, bool) for s in raw)
        first = next((i for i, ok in enumerate(numbers) if not ok), 0)
    raise corrupt(f"{key}[{first}]", "a finite number", repr(raw[first]))
