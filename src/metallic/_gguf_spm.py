"""SentencePiece vocabularies (``tokenizer.ggml.model == "llama"``) as a ``tokenizers.Tokenizer``.

Private helper of :mod:`metallic._gguf_vocab` (Llama 2, Mistral v0.1, Phi-3, Gemma ship these).

What llama.cpp does with such a vocabulary, and how it is rebuilt here:

* Control (3), unknown (2) and user-defined (4) tokens are cut out of the text first and kept
  whole (``<start_of_turn>``, Gemma's runs of spaces and newlines). Here: HF added tokens that
  are not normalized (control and unknown ones are "special", user-defined ones are not).
* Each remaining piece of text gets ``" "`` prepended when ``tokenizer.ggml.add_space_prefix``
  is true (the default) — at the start of the text and after every added token — and every
  ``" "`` becomes ``▁`` (U+2581). Here: the normalizer ``Replace(" ", "▁")`` then
  ``Prepend("▁")``, which HF applies to each piece between added tokens, exactly that rule.
* The piece is split into characters, then adjacent symbols are merged, always the pair whose
  concatenation is the vocabulary token with the highest score (leftmost on ties), until no
  pair is a token. Characters left that are not tokens become byte tokens ``<0xXX>``, one per
  UTF-8 byte. Here: a BPE model whose merge list holds, for every token, each split into two
  tokens, ranked by the token's score (ties by token id), with ``byte_fallback``. Ranks follow
  scores, so the highest-scoring pair merges first and equal pairs merge leftmost first. A
  vocabulary without the 256 byte tokens maps such characters to the unknown token (runs fused),
  as sentencepiece does; llama.cpp would look the bytes up as text and fail.

Known differences from llama.cpp (none showed on Gemma 3 or the tests' synthetic vocabulary):
DEBT: two *different* tokens with the *same* score race by token id here and by position in
llama.cpp; a token whose characters are not themselves tokens (``"ab"`` without ``"a"``) is
formed by llama.cpp but not here (HF merges need both halves in the vocabulary); overlapping
marker texts are cut leftmost-longest here, longest-first in llama.cpp; llama.cpp's Phi-3 rule
(strip spaces after special tokens, chosen by model name) is not applied.

Decoding inverts the normalizer: ``Replace("▁", " ")``, ``ByteFallback``, ``Fuse``, and with the
space prefix ``Strip(" ", 1, 0)`` (drop the first leading space of the text).
"""

from __future__ import annotations

import math
import re
from typing import Any

from tokenizers import AddedToken, decoders, models, normalizers
from tokenizers import Tokenizer as _HFTokenizer

from ._gguf_vocab import as_list, corrupt, read_token_table, scalar

_UNKNOWN, _CONTROL, _USER_DEFINED, _BYTE = 2, 3, 4, 6  # GGUF token types
_BYTE_TOKEN = re.compile(r"<0x([0-9A-F]{2})>")  # how llama.cpp's converter writes byte tokens
SPACE = "\u2581"  # ▁, SentencePiece's visible space
# llama.cpp's defaults for a SentencePiece vocabulary whose file does not name these ids.
SPM_DEFAULT_IDS = {"unknown": 0, "bos": 1, "eos": 2}


def build_sentencepiece(meta: dict[str, Any], source: str) -> tuple[_HFTokenizer, list[int]]:
    """The HF tokenizer equivalent to llama.cpp's SPM tokenizer. Returns (tokenizer, types).

    Raises:
        errors.CorruptFile: missing or malformed tokens / scores / token types, malformed or
            incomplete byte tokens, a bad ``unknown_token_id`` or ``add_space_prefix``.
    """
    key = f"{source}: tokenizer.ggml"
    tokens, types, vocab = read_token_table(meta, source)
    n_vocab = len(tokens)
    scores = _read_scores(meta, f"{key}.scores", n_vocab)
    byte_fallback = _check_byte_tokens(tokens, types, vocab, f"{key}.tokens")
    prefix = scalar(meta.get("tokenizer.ggml.add_space_prefix", True))
    if not isinstance(prefix, bool):
        raise corrupt(f"{key}.add_space_prefix", "a bool", repr(prefix))
    unk = scalar(meta.get("tokenizer.ggml.unknown_token_id", SPM_DEFAULT_IDS["unknown"]))
    if isinstance(unk, bool) or not isinstance(unk, int) or not 0 <= unk < n_vocab:
        raise corrupt(f"{key}.unknown_token_id", f"a token id in [0, {n_vocab})", repr(unk))

    merges = _merges_by_score(tokens, types, scores, vocab)
    hf = _HFTokenizer(
        models.BPE(
            vocab=vocab,
            merges=merges,
            unk_token=tokens[unk],
            byte_fallback=byte_fallback,
            fuse_unk=True,
        )
    )
    steps = [normalizers.Replace(" ", SPACE)]
    decode = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if prefix:
        steps.append(normalizers.Prepend(SPACE))
        decode.append(decoders.Strip(" ", 1, 0))
    hf.normalizer = normalizers.Sequence(steps)
    hf.decoder = decoders.Sequence(decode)
    special = [
        AddedToken(tokens[i], special=True, normalized=False)
        for i in range(n_vocab)
        if types[i] in (_CONTROL, _UNKNOWN) and tokens[i]
    ]
    user = [
        AddedToken(tokens[i], special=False, normalized=False)
        for i in range(n_vocab)
        if types[i] == _USER_DEFINED and tokens[i]
    ]
    hf.add_special_tokens(special)
    hf.add_tokens(user)
    return hf, types


def _read_scores(meta: dict[str, Any], key: str, n_vocab: int) -> list[float]:
    raw = meta.get("tokenizer.ggml.scores")
    if raw is None:  # llama.cpp reads all-zero scores; merges would then be arbitrary
        raise corrupt(key, f"an array of {n_vocab} scores (SentencePiece merges by score)", "none")
    scores = as_list(raw, key)
    if len(scores) != n_vocab:
        raise corrupt(key, f"{n_vocab} entries (one per token)", len(scores))
    for i, s in enumerate(scores):
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
            raise corrupt(f"{key}[{i}]", "a finite number", repr(s))
    return scores


def _check_byte_tokens(tokens: list[str], types: list[int], vocab: dict, key: str) -> bool:
    """Byte-type tokens are ``<0xXX>``, all 256 or none. True if all 256 byte texts exist.

    llama.cpp finds byte tokens by their text, whatever their type (a file without
    ``token_type`` still falls back to bytes), so byte fallback is on when all 256 texts exist.
    """
    count = 0
    for i, kind in enumerate(types):
        if kind == _BYTE:
            if _BYTE_TOKEN.fullmatch(tokens[i]) is None:
                raise corrupt(f"{key}[{i}]", "a byte token '<0xXX>' (type 6)", repr(tokens[i]))
            count += 1  # tokens are unique, so each byte is counted once
    if 0 < count < 256:
        typed = {tokens[i] for i, kind in enumerate(types) if kind == _BYTE}
        missing = next(f"<0x{b:02X}>" for b in range(256) if f"<0x{b:02X}>" not in typed)
        raise corrupt(
            key, "all 256 byte tokens <0x00>..<0xFF> (type 6)", f"{count} ({missing} missing)"
        )
    return all(f"<0x{b:02X}>" in vocab for b in range(256))


def _merges_by_score(
    tokens: list[str], types: list[int], scores: list[float], vocab: dict[str, int]
) -> list[tuple[str, str]]:
    """Each split of each token into two tokens, best token score first (ties: lower id).

    Added tokens (control, unknown, user-defined) are cut out of the text before the model sees
    it, so no merge can ever form them and they are skipped.
    """
    skip = (_UNKNOWN, _CONTROL, _USER_DEFINED)
    merges: list[tuple[str, str]] = []
    append = merges.append
    has = vocab.__contains__
    # Stable sort: equal scores keep token-id order (reverse=True keeps stability in Python).
    for i in sorted(range(len(tokens)), key=scores.__getitem__, reverse=True):
        token = tokens[i]
        if len(token) < 2 or types[i] in skip:
            continue
        for cut in range(1, len(token)):
            left = token[:cut]
            if has(left):
                right = token[cut:]
                if has(right):
                    append((left, right))
    return merges
