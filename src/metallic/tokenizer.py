"""Text ↔ token ids (CONTRACTS.md §3): HF ``tokenizers`` for HF folders, native tokenizers for GGUF.

Two ways in:

* :meth:`Tokenizer.from_folder` — an HF folder: ``tokenizer.json`` (+ ``tokenizer_config.json``,
  ``generation_config.json``, ``config.json`` when present).
* :meth:`Tokenizer.from_gguf` — the ``tokenizer.ggml.*`` keys of a GGUF file, with the ids
  llama.cpp gives, run natively (see :mod:`metallic._gguf_vocab`). ``tokenizer.ggml.model ==
  "gpt2"`` (byte-level BPE): the pre-tokenizer comes from ``tokenizer.ggml.pre`` (the split regexes
  llama.cpp applies for that name); a missing ``pre`` means ``"default"`` (as in llama.cpp); an
  unknown one raises :class:`~metallic.errors.UnsupportedFormat` rather than guessing, since a
  wrong split silently changes token ids. ``"llama"`` (SentencePiece with scores and byte
  fallback: Llama 2, Mistral v0.1, Phi-3, Gemma): llama.cpp's algorithm run natively, see
  :mod:`metallic._gguf_spm`. Other models raise :class:`~metallic.errors.NotImplementedFeature`.

BOS: a GGUF's ``tokenizer.ggml.add_bos_token`` decides (default: True for SentencePiece and the
llama3 family); a folder's ``add_bos_token`` in tokenizer_config.json decides, else
tokenizer.json's post-processor. Chat templates may write BOS themselves: encode their output
with ``add_special_tokens=False`` then.

Decoding never "cleans up" spaces (llama.cpp's ``clean_spaces``), so ``decode(encode(s)) == s``
for byte-level BPE. For SentencePiece it holds for text without a literal ``▁`` (U+2581, which
decodes to a space), except that with ``add_space_prefix`` llama.cpp also prefixes a space to
the text after each marker token, which decoding keeps (``"<s>hi"`` decodes as ``"<s> hi"``).
Streaming decode (:class:`StreamingDetokenizer`) maps each token to its bytes once (cached) and
feeds them to an incremental UTF-8 decoder, so it is O(1) per token and never splits a character
(SentencePiece byte tokens ``<0xE2>`` are held back until their character is complete).
"""

from __future__ import annotations

import codecs
import json
import operator
import pathlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from . import errors
from ._gguf_vocab import build_gguf_vocab, corrupt, token_id
from ._native_tokenizer import NativeTokenizer
from .chat import DEFAULT_CHAT_TEMPLATE, ChatTemplate, default_template

if TYPE_CHECKING:  # HF tokenizers is imported by from_folder only: GGUF loads run natively
    from tokenizers import Tokenizer as _HFTokenizer

__all__ = ["StreamingDetokenizer", "Tokenizer"]


def _byte_level_alphabet() -> dict[str, int]:
    """Map each of the 256 byte-level BPE characters back to the byte it stands for."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = {b: b for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = 0x100 + extra
            extra += 1
    return {chr(c): b for b, c in chars.items()}


_BYTE_OF_CHAR = _byte_level_alphabet()


def _byte_level_bytes(piece: str) -> bytes:
    """Bytes of a byte-level BPE token (characters outside the alphabet count as UTF-8 text)."""
    try:
        return bytes(_BYTE_OF_CHAR[c] for c in piece)
    except KeyError:
        return b"".join(
            bytes((_BYTE_OF_CHAR[c],)) if c in _BYTE_OF_CHAR else c.encode() for c in piece
        )


def _spm_bytes(piece: str) -> bytes:
    """Bytes of a SentencePiece-style token: ``<0xAB>`` byte tokens, ``▁`` for spaces."""
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        try:
            return bytes((int(piece[3:5], 16),))
        except ValueError:
            pass
    return piece.replace("\u2581", " ").encode()


# ---------------------------------------------------------------- streaming detokenizer
class StreamingDetokenizer:
    """Turns a stream of token ids into text without ever emitting half a character.

    Each token is mapped to its bytes (cached per tokenizer) and fed to an incremental UTF-8
    decoder; bytes of an unfinished character are held back until a later token completes it.
    Cost per token is O(token length). Made by :meth:`Tokenizer.detokenizer`.
    """

    def __init__(
        self,
        token_bytes: Callable[[int], bytes],
        vocab_size: int,
        *,
        skip_ids: frozenset[int] = frozenset(),
        strip_first_space: bool = False,
    ) -> None:
        self._token_bytes = token_bytes
        self._vocab_size = vocab_size
        self._skip = skip_ids
        self._strip = strip_first_space
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def add(self, token: int) -> str:
        """Push one token id; return the text it completes (may be ``""``)."""
        token = _check_id(token, self._vocab_size, "detokenizer.add")
        if token in self._skip:
            return ""
        data = self._token_bytes(token)
        if self._strip and data:
            self._strip = False
            if data[:1] == b" ":
                data = data[1:]
        return self._utf8.decode(data)

    def finalize(self) -> str:
        """Flush held-back bytes (an unfinished character becomes U+FFFD) and reset."""
        return self._utf8.decode(b"", final=True)


def _check_id(token: object, vocab_size: int, where: str) -> int:
    try:
        value = operator.index(token)  # rejects floats and strings
    except TypeError:
        raise errors.InvalidArgument(
            f"[tokenizer] {where}: expected an int token id, got {type(token).__name__}"
        ) from None
    if not 0 <= value < vocab_size:
        raise errors.InvalidArgument(
            f"[tokenizer] {where}: expected a token id in [0, {vocab_size}), got {value}"
        )
    return value


# ---------------------------------------------------------------- tokenizer
class Tokenizer:
    """Encode / decode / chat templates for one model (see module docstring)."""

    def __init__(
        self,
        hf: _HFTokenizer | NativeTokenizer,
        *,
        source: str,
        bos_id: int | None,
        eos_ids: frozenset[int],
        eos_id: int | None,
        add_bos: bool | None,
        add_eos: bool = False,
        chat_template: str | None,
    ) -> None:
        """Wrap a built ``tokenizers.Tokenizer``; use the ``from_*`` constructors instead.

        Args:
            hf: the HF tokenizer (model, pre-tokenizer, decoder, added tokens), or the native
                one of a GGUF vocabulary.
            source: path shown in error messages.
            bos_id: BOS token id or None. eos_ids: every id that ends generation.
            eos_id: the primary EOS id (its text is the template's ``eos_token``).
            add_bos: prepend BOS in ``encode``; None = leave it to ``hf``'s post-processor.
            add_eos: append the primary EOS in ``encode`` (only when ``add_bos`` is not None).
            chat_template: Jinja2 text, or None for :data:`DEFAULT_CHAT_TEMPLATE`.
        """
        for flag, token, what in ((add_bos, bos_id, "BOS"), (add_eos, eos_id, "EOS")):
            if flag and token is None:
                raise corrupt(f"{source}: add_{what.lower()}_token", f"a {what} token", "none")
        self._hf = hf
        self.source = source
        self._vocab_size = hf.get_vocab_size(with_added_tokens=True)
        self._bos_id = bos_id
        self._eos_ids = frozenset(eos_ids)
        self._eos_id = eos_id
        self._add_bos = add_bos
        self._add_eos = add_eos
        self._chat_template = chat_template
        self._fallback = default_template(lambda t: hf.token_to_id(t) is not None)
        self._template = ChatTemplate(chat_template or self._fallback, f"{source}: chat_template")
        added = hf.get_added_tokens_decoder()
        self._added_ids = frozenset(added)
        self._special_ids = frozenset(i for i, t in added.items() if t.special)
        self._piece_kind, self._strip_first = _decoder_kind(hf)
        self._bytes_cache: dict[int, bytes] = {}

    # ------------------------------------------------------------ constructors
    @classmethod
    def from_folder(cls, path: str | pathlib.Path) -> Tokenizer:
        """Load an HF folder (``tokenizer.json`` required; configs optional).

        Raises:
            errors.FileNotFound: no folder or no ``tokenizer.json``.
            errors.CorruptFile: unreadable JSON or special tokens not in the vocabulary.
        """
        folder = pathlib.Path(path)
        file = folder / "tokenizer.json"
        if not file.is_file():
            raise errors.FileNotFound(
                f"[tokenizer] {folder}: expected a folder with tokenizer.json, got none"
            )
        from tokenizers import Tokenizer as _HFTokenizer  # deferred: see TYPE_CHECKING above

        try:
            hf = _HFTokenizer.from_file(str(file))
        except Exception as exc:  # tokenizers raises plain Exception on bad files
            raise corrupt(str(file), "a valid tokenizer.json", exc) from exc
        cfg = _read_json(folder / "tokenizer_config.json")
        gen = _read_json(folder / "generation_config.json")
        model_cfg = _read_json(folder / "config.json")
        n_vocab = hf.get_vocab_size(with_added_tokens=True)
        rows = model_cfg.get("vocab_size")
        if isinstance(rows, int) and not isinstance(rows, bool) and n_vocab > rows:
            # The model may pad its embedding past the tokenizer, never the other way round.
            raise corrupt(f"{file}", f"at most {rows} tokens (config.json vocab_size)", n_vocab)

        def token_of(key: str) -> int | None:
            value = cfg.get(key)
            content = value.get("content") if isinstance(value, dict) else value
            if content is None:
                return None
            token = hf.token_to_id(content) if isinstance(content, str) else None
            if token is None:
                raise corrupt(f"{folder}/tokenizer_config.json {key}", "a vocab token", content)
            return token

        bos_id = token_of("bos_token")
        if bos_id is None:
            bos_id = token_id(model_cfg, "bos_token_id", n_vocab, f"{folder}/config.json")
        eos_id = token_of("eos_token")
        eos_ids = {eos_id} if eos_id is not None else set()
        for name, conf in (("generation_config.json", gen), ("config.json", model_cfg)):
            raw = conf.get("eos_token_id")
            for value in raw if isinstance(raw, list) else [raw]:
                token = token_id(
                    {"eos_token_id": value}, "eos_token_id", n_vocab, f"{folder}/{name}"
                )
                if token is not None:
                    eos_ids.add(token)
                    eos_id = token if eos_id is None else eos_id
        template = _folder_template(folder, cfg)
        add_bos = cfg.get("add_bos_token")
        return cls(
            hf,
            source=str(folder),
            bos_id=bos_id,
            eos_ids=frozenset(eos_ids),
            eos_id=eos_id,
            add_bos=add_bos if isinstance(add_bos, bool) else None,
            add_eos=cfg.get("add_eos_token") is True,
            chat_template=template,
        )

    @classmethod
    def from_gguf(cls, metadata: dict[str, Any], source: str) -> Tokenizer:
        """Rebuild the tokenizer from GGUF ``tokenizer.ggml.*`` metadata.

        Args:
            metadata: GGUF key -> value (arrays as lists or numpy arrays).
            source: the file path, for messages.

        Raises:
            errors.CorruptFile: missing or inconsistent keys, unknown merge tokens, bad ids,
                SentencePiece scores / byte tokens that do not fit the token list.
            errors.UnsupportedFormat: an unknown ``tokenizer.ggml.pre`` (byte-level BPE).
            errors.NotImplementedFeature: a tokenizer model other than ``gpt2`` / ``llama``.
        """
        v = build_gguf_vocab(metadata, source)
        return cls(
            v.hf,
            source=source,
            bos_id=v.bos_id,
            eos_ids=v.eos_ids,
            eos_id=v.eos_id,
            add_bos=v.add_bos,
            add_eos=v.add_eos,
            chat_template=v.chat_template,
        )

    # ------------------------------------------------------------ properties
    @property
    def vocab_size(self) -> int:
        """Number of token ids (model vocabulary + added tokens)."""
        return self._vocab_size

    @property
    def bos_id(self) -> int | None:
        """Beginning-of-sequence id, or None."""
        return self._bos_id

    @property
    def eos_ids(self) -> frozenset[int]:
        """Every id that ends generation (eos, eot, eom, generation_config's list)."""
        return self._eos_ids

    @property
    def chat_template(self) -> str | None:
        """The model's own Jinja2 chat template, or None (a default is then used)."""
        return self._chat_template

    @property
    def knows_chat_format(self) -> bool:
        """True when chat prompts follow the model's format: its own template, or the turn format
        of its family recognised from the vocabulary (Gemma's ``<start_of_turn>``); False when
        only the ChatML guess is left."""
        return self._chat_template is not None or self._fallback is not DEFAULT_CHAT_TEMPLATE

    # ------------------------------------------------------------ encode / decode
    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; special markers in it (``<|im_start|>``) are single tokens.

        Args:
            text: the text. add_special_tokens: add BOS (/EOS) if the model does so.

        Raises:
            errors.InvalidArgument: ``text`` is not a str or holds lone surrogates.
        """
        if not isinstance(text, str):
            raise errors.InvalidArgument(
                f"[tokenizer] encode: expected str, got {type(text).__name__}"
            )
        try:
            if self._add_bos is None:
                return self._hf.encode(text, add_special_tokens=add_special_tokens).ids
            ids = self._hf.encode(text, add_special_tokens=False).ids
        except (TypeError, UnicodeEncodeError) as exc:  # lone surrogates are not UTF-8
            raise errors.InvalidArgument(
                f"[tokenizer] encode: expected valid Unicode text, got {exc}"
            ) from exc
        if add_special_tokens:
            if self._add_bos:
                ids.insert(0, self._bos_id)
            if self._add_eos:
                ids.append(self._eos_id)
        return ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        """Text of ``ids`` (bytes of an unfinished character become U+FFFD).

        Raises:
            errors.InvalidArgument: an id is not an int or is outside ``[0, vocab_size)``.
        """
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
            raise errors.InvalidArgument(
                f"[tokenizer] decode: expected a sequence of ints, got {type(ids).__name__}"
            )
        checked = [_check_id(t, self._vocab_size, "decode") for t in ids]
        return self._hf.decode(checked, skip_special_tokens=skip_special_tokens)

    def detokenizer(
        self, *, skip_special_tokens: bool = False, model_vocab_size: int | None = None
    ) -> StreamingDetokenizer:
        """A fresh :class:`StreamingDetokenizer` (one per generated sequence).

        ``model_vocab_size``: the model's embedding rows when they exceed the tokenizer's
        vocabulary (padded HF checkpoints such as Qwen2.5); ids in the padding decode to "".
        """
        skip = self._special_ids if skip_special_tokens else frozenset()
        bound = max(self._vocab_size, model_vocab_size or 0)
        return StreamingDetokenizer(
            self._token_bytes, bound, skip_ids=skip, strip_first_space=self._strip_first
        )

    def _token_bytes(self, token: int) -> bytes:
        data = self._bytes_cache.get(token)
        if data is None and self._piece_kind == "native":  # ids past the vocabulary: padding
            data = self._hf.token_bytes(token) if token < self._vocab_size else b""
            self._bytes_cache[token] = data
        if data is None:
            piece = self._hf.id_to_token(token)
            if piece is None:
                data = b""
            elif token in self._added_ids:
                data = piece.encode()
            elif self._piece_kind == "byte_level":
                data = _byte_level_bytes(piece)
            elif self._piece_kind == "spm":
                data = _spm_bytes(piece)
            else:  # DEBT: unknown HF decoder; per-token text is right for most, not WordPiece
                data = self._hf.decode([token], skip_special_tokens=False).encode()
            self._bytes_cache[token] = data
        return data

    # ------------------------------------------------------------ chat
    def apply_chat_template(
        self, messages: list[dict], *, add_generation_prompt: bool = True
    ) -> str:
        """Render ``messages`` with the model's template (when it has none: Gemma's turns for a Gemma
        vocabulary, else ChatML; see :func:`metallic.chat.default_template`).

        Encode the result with ``add_special_tokens=False`` when the template writes BOS itself.

        Raises:
            errors.InvalidArgument: malformed messages, or the template rejects them.
            errors.CorruptFile: the template does not compile.
        """

        def text(token: int | None) -> str:
            return (self._hf.id_to_token(token) or "") if token is not None else ""

        return self._template.render(
            messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=text(self._bos_id),
            eos_token=text(self._eos_id),
        )

    def __repr__(self) -> str:
        return f"Tokenizer(source={self.source!r}, vocab_size={self._vocab_size})"


# ---------------------------------------------------------------- helpers
def _decoder_kind(hf: _HFTokenizer | NativeTokenizer) -> tuple[str | None, bool]:
    """('byte_level' | 'spm' | 'native' | None, strip_first_space) from the HF decoder's
    description ('native': the native SentencePiece tokenizer gives token bytes itself).

    None means "unknown decoder": streaming then decodes each token on its own.
    """
    if isinstance(hf, NativeTokenizer):
        return "native", hf.strip_first_space
    if hf.decoder is None:
        return None, False
    try:
        desc = json.loads(hf.decoder.__getstate__())
    except Exception:  # an exotic decoder without a JSON state
        return None, False
    kind = desc.get("type")
    if kind == "ByteLevel":
        return "byte_level", False
    if kind == "Metaspace":
        return "spm", desc.get("prepend_scheme", "always") != "never"
    if kind == "Sequence":
        parts = desc.get("decoders", [])
        types = [p.get("type") for p in parts]
        if (
            types
            and set(types) <= {"Replace", "ByteFallback", "Fuse", "Strip"}
            and all(p.get("content") == " " for p in parts if p["type"] == "Replace")
        ):
            strip = any(
                p["type"] == "Strip" and p.get("start") == 1 and not p.get("stop") for p in parts
            )
            return "spm", strip
    return None, False


def _read_json(path: pathlib.Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise corrupt(str(path), "valid JSON", exc) from exc
    if not isinstance(value, dict):
        raise corrupt(str(path), "a JSON object", type(value).__name__)
    return value


def _folder_template(folder: pathlib.Path, cfg: dict[str, Any]) -> str | None:
    """``chat_template`` from tokenizer_config.json (str or named list) or chat_template.jinja."""
    template = cfg.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if template is None and (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    if template is not None and not isinstance(template, str):
        raise corrupt(
            f"{folder / 'tokenizer_config.json'} chat_template", "a string", type(template)
        )
    return template
