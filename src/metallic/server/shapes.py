"""OpenAI response objects as plain dicts, and their Server-Sent-Events framing.

The shapes follow OpenAI's current API field for field (checked against the ``openai`` SDK's
types in ``tests/python/test_server_protocol.py``):

* ``chat_completion`` / ``chat_chunk``: ``chat.completion`` and ``chat.completion.chunk``. A
  stream sends, per choice, a first chunk whose delta is ``{"role": "assistant", "content": ""}``
  (``chat_chunk_choice(i, role=True)``), content chunks ``{"content": text}``, and a last chunk
  with ``delta: {}`` and the finish reason; with ``stream_options.include_usage`` every chunk has
  ``"usage": null`` and one more chunk (``chat_usage_chunk``) carries the usage with no choices.
* ``text_completion`` / ``text_completion_chunk``: the legacy endpoint; chunks share the
  object type ``text_completion`` and carry ``finish_reason: null`` until the last one.

Finish reasons: metallic's ``"stop"`` and ``"length"`` pass through (:func:`finish_reason`); a
cancelled request has none, so the caller ends its stream without a final chunk.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from ..errors import InvalidArgument

FINISH_REASONS = ("stop", "length")
SSE_DONE = b"data: [DONE]\n\n"
SSE_CONTENT_TYPE = "text/event-stream"
# OpenAI's stand-in for a log-probability of -inf (a token the model gives no mass).
MIN_LOGPROB = -9999.0

# A token as generated: its text (or its raw bytes when it is not valid UTF-8 by itself), its
# log-probability, and the most likely alternatives as (text or bytes, logprob), or None.
TokenLogprob = tuple[str | bytes, float, Sequence[tuple[str | bytes, float]] | None]


def finish_reason(reason: str) -> str:
    """Validates a metallic finish reason ("stop" | "length") for a response object."""
    if reason not in FINISH_REASONS:
        raise InvalidArgument(
            f"[server] finish_reason: expected one of {', '.join(FINISH_REASONS)}, got {reason!r}"
        )
    return reason


def new_id(kind: str) -> str:
    """A fresh response id: ``chatcmpl-...`` (kind "chat") or ``cmpl-...`` ("completion")."""
    prefixes = {"chat": "chatcmpl-", "completion": "cmpl-"}
    if kind not in prefixes:
        raise InvalidArgument(f"[server] new_id: expected 'chat' or 'completion', got {kind!r}")
    return prefixes[kind] + uuid.uuid4().hex


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict:
    """The ``usage`` object; ``cached_tokens`` are prompt tokens whose KV was reused."""
    for name, value in (
        ("prompt_tokens", prompt_tokens),
        ("completion_tokens", completion_tokens),
        ("cached_tokens", cached_tokens),
    ):
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            raise InvalidArgument(f"[server] usage.{name}: expected an int >= 0, got {value!r}")
    if cached_tokens > prompt_tokens:
        raise InvalidArgument(
            f"[server] usage.cached_tokens: expected at most prompt_tokens ({prompt_tokens}), "
            f"got {cached_tokens}"
        )
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _token(token: str | bytes) -> tuple[str, list[int]]:
    """(text, UTF-8 bytes); bytes that are not valid UTF-8 show as ``\\xNN`` escapes."""
    if isinstance(token, bytes):
        return token.decode("utf-8", errors="backslashreplace"), list(token)
    if isinstance(token, str):
        return token, list(token.encode("utf-8", errors="surrogatepass"))
    raise InvalidArgument(f"[server] logprobs token: expected str or bytes, got {token!r}")


def _logprob(value: float) -> float:
    """A JSON-safe log-probability in [-9999, 0]: -inf (or anything below) becomes OpenAI's
    -9999.0, float rounding a hair above 0 becomes 0; NaN or a clear positive is refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value <= 1e-6:
        raise InvalidArgument(f"[server] logprob: expected a number <= 0, got {value!r}")
    return float(min(max(value, MIN_LOGPROB), 0.0))


def chat_logprobs(entries: Iterable[TokenLogprob]) -> dict:
    """Chat ``logprobs``: ``{"content": [{token, logprob, bytes, top_logprobs}...]}``."""
    content = []
    for token, logprob, top in entries:
        text, raw = _token(token)
        alternatives = []
        for alt, alt_logprob in top or ():
            alt_text, alt_raw = _token(alt)
            alternatives.append(
                {"token": alt_text, "logprob": _logprob(alt_logprob), "bytes": alt_raw}
            )
        content.append(
            {
                "token": text,
                "logprob": _logprob(logprob),
                "bytes": raw,
                "top_logprobs": alternatives,
            }
        )
    return {"content": content, "refusal": None}


def completion_logprobs(entries: Iterable[TokenLogprob], text_offset: int = 0) -> dict:
    """Legacy completions ``logprobs`` (tokens, token_logprobs, top_logprobs, text_offset).

    ``text_offset`` is the character offset of the first token in the completion text; a stream
    passes the length of the text already sent. ``top_logprobs`` is null when no entry has
    alternatives (``logprobs: 0``), else one ``{text: logprob}`` dict per token. An entry whose
    logprob is None (an echoed prompt's first token) has null in both lists, as OpenAI's.
    """
    tokens, logprobs, tops, offsets = [], [], [], []
    offset = text_offset
    any_top = False
    for token, logprob, top in entries:
        text, _ = _token(token)
        tokens.append(text)
        offsets.append(offset)
        offset += len(text)
        any_top = any_top or top is not None
        if logprob is None:  # an echoed prompt's first token: nothing before it to condition on
            logprobs.append(None)
            tops.append(None)
            continue
        logprobs.append(_logprob(logprob))
        tops.append({_token(alt)[0]: _logprob(lp) for alt, lp in top or ()})
    return {
        "tokens": tokens,
        "token_logprobs": logprobs,
        "top_logprobs": tops if any_top else None,
        "text_offset": offsets,
    }


def chat_choice(index: int, text: str, reason: str, logprobs: dict | None = None) -> dict:
    """One choice of a non-streamed chat completion."""
    return {
        "index": index,
        "message": {"role": "assistant", "content": text, "refusal": None, "annotations": []},
        "logprobs": logprobs,
        "finish_reason": finish_reason(reason),
    }


def chat_completion(
    id: str,
    created: int,
    model: str,
    choices: list[dict],
    usage: dict,
    system_fingerprint: str | None = None,
) -> dict:
    """A ``chat.completion`` object (choices from :func:`chat_choice`)."""
    return {
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": system_fingerprint,
        "choices": choices,
        "usage": usage,
    }


def chat_chunk_choice(
    index: int,
    *,
    role: bool = False,
    content: str | None = None,
    reason: str | None = None,
    logprobs: dict | None = None,
) -> dict:
    """One choice of a chunk: ``role=True`` for the first one of a choice (its content
    defaults to ""), ``content`` for text, neither for the last one (``delta: {}``, with
    ``reason``)."""
    if role:
        delta: dict[str, Any] = {"role": "assistant", "content": content or ""}
    elif content is not None:
        delta = {"content": content}
    else:
        delta = {}
    return {
        "index": index,
        "delta": delta,
        "logprobs": logprobs,
        "finish_reason": None if reason is None else finish_reason(reason),
    }


def chat_chunk(
    id: str,
    created: int,
    model: str,
    choices: list[dict],
    *,
    include_usage: bool = False,
    system_fingerprint: str | None = None,
) -> dict:
    """A ``chat.completion.chunk`` (choices from :func:`chat_chunk_choice`); with
    ``include_usage`` it carries ``"usage": null`` as OpenAI's do."""
    chunk = {
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": system_fingerprint,
        "choices": choices,
    }
    if include_usage:
        chunk["usage"] = None
    return chunk


def chat_usage_chunk(
    id: str, created: int, model: str, usage: dict, system_fingerprint: str | None = None
) -> dict:
    """The last chunk of a stream with ``include_usage``: no choices, the usage."""
    chunk = chat_chunk(id, created, model, [], system_fingerprint=system_fingerprint)
    chunk["usage"] = usage
    return chunk


def completion_choice(
    index: int, text: str, reason: str | None = None, logprobs: dict | None = None
) -> dict:
    """One choice of a ``text_completion`` (``reason`` None only in a stream's chunks)."""
    return {
        "index": index,
        "text": text,
        "logprobs": logprobs,
        "finish_reason": None if reason is None else finish_reason(reason),
    }


def text_completion(
    id: str,
    created: int,
    model: str,
    choices: list[dict],
    usage: dict | None,
    system_fingerprint: str | None = None,
) -> dict:
    """A ``text_completion`` object (choices from :func:`completion_choice`)."""
    obj = {
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": system_fingerprint,
        "choices": choices,
    }
    if usage is not None:
        obj["usage"] = usage
    return obj


def text_completion_chunk(
    id: str,
    created: int,
    model: str,
    choices: list[dict],
    *,
    include_usage: bool = False,
    system_fingerprint: str | None = None,
) -> dict:
    """A streamed ``text_completion``; ``"usage": null`` with ``include_usage``."""
    chunk = text_completion(id, created, model, choices, None, system_fingerprint)
    if include_usage:
        chunk["usage"] = None
    return chunk


def text_completion_usage_chunk(
    id: str, created: int, model: str, usage: dict, system_fingerprint: str | None = None
) -> dict:
    """The last chunk of a legacy stream with ``include_usage``: no choices, the usage."""
    return text_completion(id, created, model, [], usage, system_fingerprint)


def model_list(model_ids: Sequence[str], created: int, owned_by: str = "metallic") -> dict:
    """``GET /v1/models``: ``{"object": "list", "data": [{id, object, created, owned_by}]}``."""
    data = [
        {"id": m, "object": "model", "created": created, "owned_by": owned_by} for m in model_ids
    ]
    return {"object": "list", "data": data}


def sse(obj: Any) -> bytes:
    """One SSE event, ``data: <compact JSON>\\n\\n``, UTF-8 (non-ASCII kept as is).

    NaN or infinity cannot be sent as JSON and raise InvalidArgument; a string with lone
    surrogates falls back to ASCII escapes so the frame is still valid UTF-8.
    """
    try:
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        payload = text.encode("utf-8")
    except UnicodeEncodeError:
        payload = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("ascii")
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(
            f"[server] sse: expected a JSON-serialisable object, got {exc}"
        ) from exc
    return b"data: " + payload + b"\n\n"
