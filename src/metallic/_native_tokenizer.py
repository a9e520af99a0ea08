"""The native tokenizers of GGUF vocabularies behind the interface of ``tokenizers.Tokenizer``.

Private helper of :mod:`metallic.tokenizer`: :class:`NativeTokenizer` gives a native tokenizer
(SentencePiece: :mod:`metallic._gguf_spm`; byte-level BPE: :mod:`metallic._gguf_vocab`) the
part of ``tokenizers.Tokenizer``'s interface that :class:`metallic.tokenizer.Tokenizer` uses, so
every kind of tokenizer sits behind one class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

_UNKNOWN, _USER_DEFINED = 2, 4  # GGUF token types; markers are 2..4


class AddedToken(NamedTuple):
    """A marker token as :meth:`NativeTokenizer.get_added_tokens_decoder` reports it: the fields
    of ``tokenizers.AddedToken`` that :class:`metallic.tokenizer.Tokenizer` reads (a local type,
    so that loading a GGUF model does not import HF ``tokenizers``)."""

    content: str
    special: bool


class Encoding:
    """What :meth:`NativeTokenizer.encode` returns (``ids``, as ``tokenizers.Encoding``)."""

    __slots__ = ("ids",)

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids


class NativeTokenizer:
    """A native tokenizer (``_core.SpmTokenizer`` / ``_core.BpeTokenizer``) behind
    ``tokenizers.Tokenizer``'s method names.

    Args:
        native: the native tokenizer. types: the GGUF token types (uint8 array).
        strip_first_space: decoding drops one leading space (SentencePiece's space prefix).
    """

    def __init__(self, native: Any, types: np.ndarray, *, strip_first_space: bool) -> None:
        self.native = native
        markers = np.flatnonzero((types >= _UNKNOWN) & (types <= _USER_DEFINED)).tolist()
        self._added = {i: int(types[i]) != _USER_DEFINED for i in markers if native.piece(i)}
        self.special_ids = frozenset(i for i, special in self._added.items() if special)
        self.strip_first_space = strip_first_space

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
        if self.strip_first_space and data[:1] == b" ":
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
            i: AddedToken(self.native.piece(i), special=special)
            for i, special in self._added.items()
        }
