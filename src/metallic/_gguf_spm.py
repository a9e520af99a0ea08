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

:class:`SpmTokenizer` gives it the part of ``tokenizers.Tokenizer``'s interface that
:class:`metallic.tokenizer.Tokenizer` uses, so both kinds of tokenizer sit behind one class.
Decoding maps each id to its bytes (``▁`` → ``" "``, ``<0xXX>`` → the byte, markers as their
text), decodes UTF-8 (an unfinished character becomes U+FFFD) and, with the space prefix, drops
the first leading space, exactly as the streaming detokenizer does.

DEBT: llama.cpp's Phi-3 rule (strip spaces after special tokens, chosen by model name) and
per-token lstrip/rstrip attributes are not applied.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from tokenizers import AddedToken

from ._gguf_vocab import as_list, corrupt, read_token_table, scalar

_UNKNOWN, _CONTROL, _USER_DEFINED = 2, 3, 4  # GGUF token types
SPACE = "\u2581"  # ▁, SentencePiece's visible space
# llama.cpp's defaults for a SentencePiece vocabulary whose file does not name these ids.
SPM_DEFAULT_IDS = {"unknown": 0, "bos": 1, "eos": 2}


class Encoding:
    """What :meth:`SpmTokenizer.encode` returns (``ids``, as ``tokenizers.Encoding``)."""

    __slots__ = ("ids",)

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids


class SpmTokenizer:
    """The native SentencePiece tokenizer behind ``tokenizers.Tokenizer``'s method names."""

    def __init__(self, native: Any, types: np.ndarray) -> None:
        self.native = native
        markers = np.flatnonzero((types >= _UNKNOWN) & (types <= _USER_DEFINED)).tolist()
        self._added = {i: int(types[i]) != _USER_DEFINED for i in markers if native.piece(i)}
        self.special_ids = frozenset(i for i, special in self._added.items() if special)
        self.add_space_prefix: bool = native.add_space_prefix

    def encode(self, text: str, add_special_tokens: bool = False) -> Encoding:
        """Ids of ``text`` with marker tokens parsed (BOS/EOS are the caller's business).

        Raises:
            UnicodeEncodeError: ``text`` holds lone surrogates.
        """
        del add_special_tokens  # BOS / EOS: metallic.tokenizer.Tokenizer adds them
        return Encoding(self.native.encode(text.encode("utf-8"), True))

    def encode_bytes(self, data: bytes) -> list[int]:
        """Ids of raw bytes, markers other than user-defined ones left as text (llguidance)."""
        return self.native.encode(data, False)

    def token_bytes(self, token: int) -> bytes:
        return self.native.token_bytes(token)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        skip = self.special_ids if skip_special_tokens else frozenset()
        data = b"".join(self.native.token_bytes(t) for t in ids if t not in skip)
        if self.add_space_prefix and data[:1] == b" ":
            data = data[1:]
        return data.decode("utf-8", errors="replace")

    def id_to_token(self, token: int) -> str | None:
        return self.native.piece(token) if 0 <= token < self.native.size else None

    def token_to_id(self, text: str) -> int | None:
        return self.native.find(text)

    def get_vocab_size(self, with_added_tokens: bool = True) -> int:
        del with_added_tokens  # markers are part of the token table
        return self.native.size

    def get_added_tokens_decoder(self) -> dict[int, AddedToken]:
        return {
            i: AddedToken(self.native.piece(i), special=special, normalized=False)
            for i, special in self._added.items()
        }


def build_sentencepiece(meta: dict[str, Any], source: str) -> tuple[SpmTokenizer, np.ndarray]:
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
    return SpmTokenizer(native, types), types


def _read_scores(meta: dict[str, Any], key: str, n_vocab: int) -> np.ndarray:
    raw = meta.get("tokenizer.ggml.scores")
    if raw is None:  # llama.cpp reads all-zero scores; merges would then be arbitrary
        raise corrupt(key, f"an array of {n_vocab} scores (SentencePiece merges by score)", "none")
    if not isinstance(raw, np.ndarray):
        raw = as_list(raw, key)
    if len(raw) != n_vocab:
        raise corrupt(key, f"{n_vocab} entries (one per token)", len(raw))
    try:
        scores = np.asarray(raw)
    except ValueError:  # ragged nested lists
        scores = np.asarray(raw, dtype=object)
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
