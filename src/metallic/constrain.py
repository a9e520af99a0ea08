"""Constrained decoding: ``response_format`` → a per-request token mask.

The grammar side (JSON schema / regex → automaton → allowed-token bitmask) is llguidance
(``pip install metallic[constrained]``), which works from the HF ``tokenizers`` JSON of the
model's tokenizer, or, for GGUF SentencePiece vocabularies (native tokenizer), from each token's
bytes and our encoder. Each step it writes the bitmask straight into the native sampler's mask
buffer (``Sampler.mask``: ceil(n_vocab / 32) uint32 words, no copy); the sampler sets the logits
of disallowed tokens to -inf before any other step (native, no allocation).

Accepted ``response_format`` values (OpenAI-style dicts):

* ``{"type": "json_schema", "schema": {...}}`` (or OpenAI's ``"json_schema": {"schema": ...}``)
* ``{"type": "json_object"}``: any JSON object
* ``{"type": "regex", "regex": "..."}``: the whole output matches the regex

JSON comes out on one line in ``json.dumps`` style (see ``JSON_STYLE``). The output is complete
and valid when ``finish_reason == "stop"``; ``max_tokens`` or a full context may cut it short.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import InvalidArgument, NotImplementedFeature

_TYPES = ("json_schema", "json_object", "regex")
# One-line JSON as json.dumps writes it. Flexible whitespace would let a model pad forever
# (tabs and newlines are always allowed there), so the output is not guaranteed to end; a
# schema's "x-guidance" key may still override this.
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _llguidance():
    try:
        import llguidance
    except ImportError as exc:
        raise NotImplementedFeature(
            "[constrain] response_format: expected the llguidance package "
            "(pip install 'metallic[constrained]'), got none installed"
        ) from exc
    return llguidance


def grammar_of(response_format: Any) -> str:
    """Validates ``response_format`` and returns the llguidance grammar text for it."""
    if not isinstance(response_format, dict):
        raise InvalidArgument(
            f"[constrain] response_format: expected a dict with a 'type' key, "
            f"got {type(response_format).__name__}"
        )
    kind = response_format.get("type")
    if kind not in _TYPES:
        raise InvalidArgument(
            f"[constrain] response_format.type: expected one of {', '.join(_TYPES)}, got {kind!r}"
        )
    llg = _llguidance()
    if kind == "regex":
        regex = response_format.get("regex", response_format.get("pattern"))
        if not isinstance(regex, str) or not regex:
            raise InvalidArgument(
                f"[constrain] response_format.regex: expected a non-empty string, got {regex!r}"
            )
        return llg.LLMatcher.grammar_from_regex(regex)
    if kind == "json_object":
        schema: Any = {"type": "object"}
    else:
        schema = response_format.get("schema")
        nested = response_format.get("json_schema")
        if schema is None and isinstance(nested, dict):
            schema = nested.get("schema")
        if not isinstance(schema, (dict, bool)):
            raise InvalidArgument(
                "[constrain] response_format.schema: expected a JSON schema (dict), "
                f"got {type(schema).__name__}"
            )
    try:
        text = json.dumps(schema)
        return llg.LLMatcher.grammar_from_json_schema(text, defaults=JSON_STYLE)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(
            f"[constrain] response_format.schema: expected a JSON-serialisable schema, got {exc}"
        ) from None


class TokenizerIndex:
    """llguidance's view of one model's vocabulary (built once per Model, ~0.2 s for 49k)."""

    def __init__(self, tokenizer, n_vocab: int):
        llg = _llguidance()
        hf = getattr(tokenizer, "_hf", None)  # metallic.tokenizer.Tokenizer wraps an HF one
        eos = sorted(tokenizer.eos_ids)
        self.n_vocab = n_vocab
        if hf is not None and hasattr(hf, "to_str"):
            source = hf.to_str()
        elif hf is not None and hasattr(hf, "encode_bytes"):  # native SentencePiece (GGUF)
            source = llg.TokenizerWrapper(_TokenTable(tokenizer, hf, n_vocab))
        else:
            raise NotImplementedFeature(
                "[constrain] tokenizer: expected a metallic Tokenizer, "
                f"got {type(tokenizer).__name__}"
            )
        try:
            self.llg = llg.LLTokenizer(source, n_vocab=n_vocab, eos_token=eos or None)
        except (ValueError, RuntimeError) as exc:
            raise NotImplementedFeature(
                f"[constrain] tokenizer: expected one llguidance can index, got an error: {exc}"
            ) from None


class _TokenTable:
    """What ``llguidance.TokenizerWrapper`` reads: each id's bytes and a bytes -> ids function.

    As llguidance's own llama.cpp adapter does, special (control) tokens are marked with a
    leading 0xFF byte so that grammars never spell them out of text.
    """

    def __init__(self, tokenizer, spm, n_vocab: int):
        self.eos_token_id = min(tokenizer.eos_ids) if tokenizer.eos_ids else None
        self.bos_token_id = tokenizer.bos_id
        special = spm.special_ids
        table = spm.native.all_token_bytes()
        self.tokens = [b"\xff" + t if i in special else t for i, t in enumerate(table)]
        self.tokens += [b""] * (n_vocab - len(self.tokens))  # padded embedding rows
        self.special_token_ids = sorted(special)
        self._encode = spm.encode_bytes

    def __call__(self, data: bytes) -> list[int]:
        return self._encode(data)


class GrammarConstraint:
    """One request's automaton; implements ``generate.Constraint``."""

    def __init__(self, index: TokenizerIndex, grammar: str):
        llg = _llguidance()
        self._matcher = llg.LLMatcher(index.llg, grammar, log_level=0)
        if self._matcher.is_error():
            raise InvalidArgument(
                f"[constrain] response_format: expected a valid grammar, got an error: "
                f"{self._matcher.get_error()}"
            )
        self._mask = None
        self._ptr = 0
        self._nbytes = 0

    def start(self, sampler) -> None:
        mask = sampler.mask  # a view of the sampler's buffer; kept for the whole request
        mask[:] = 0  # words past llguidance's vocabulary (if any) stay disallowed
        self._mask = mask
        self._ptr = mask.ctypes.data
        self._nbytes = mask.nbytes
        self._fill()
        sampler.mask_enabled = True

    def _fill(self) -> None:
        self._matcher.unsafe_compute_mask_ptr(self._ptr, self._nbytes)
        if self._matcher.is_error():
            raise InvalidArgument(
                f"[constrain] mask: expected the grammar to continue, got an error: "
                f"{self._matcher.get_error()}"
            )

    def advance(self, token: int) -> bool:
        if not self._matcher.consume_token(token):
            raise InvalidArgument(
                f"[constrain] token {token}: expected a token the grammar allows, got a rejected "
                f"one ({self._matcher.get_error()})"
            )
        if self._matcher.is_stopped():
            return True
        self._fill()
        return False
