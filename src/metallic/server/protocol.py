"""OpenAI request bodies → :class:`ParsedRequest` (errors: :class:`~.api_errors.APIError`).

Plain code, no pydantic: every check names its parameter by its dotted path (``param`` of the
error, e.g. ``messages[2].content[0].type``) and says what was expected and what came, in the
house shape ``[/v1/chat/completions] max_tokens: expected an integer in [1, 2147483647], got
boolean true``. Anything malformed ends in ``APIError`` (status 400), never another exception.

A JSON ``null`` is treated like an absent key (OpenAI does the same). Top-level keys the server
does not use are ignored and listed in ``ParsedRequest.ignored`` (the app may log them); the ones
that ask for something this server cannot do (``tools``, ``functions``, ``audio``, ``suffix``...)
are refused with 400 ``unsupported_parameter`` instead of being silently dropped.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from .api_errors import APIError, api_error_from, describe, parse_json_body

__all__ = [
    "APIError",
    "ParsedRequest",
    "api_error_from",
    "describe",
    "parse_chat",
    "parse_completion",
    "parse_json_body",
]

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"

_INT32_MAX = (1 << 31) - 1
_TOKEN_KEY = re.compile(r"[0-9]{1,10}")
MAX_CHOICES = 128  # prompts x n of one /v1/completions request at most


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_real(x: object) -> bool:
    if isinstance(x, float):
        return math.isfinite(x)
    return _is_int(x)


@dataclass(frozen=True)
class ParsedRequest:
    """A validated request. ``kind`` is "chat" (``messages`` set) or "completion" (``prompts``:
    one or more, each a string or token ids; choice ``i * n + j`` is prompt i's j-th).

    ``messages`` holds ``{"role": "system" | "user" | "assistant", "content": str}`` dicts
    ("developer" arrives as "system"; text parts are joined with "\\n"). ``max_tokens`` None:
    the request gave no limit (OpenAI's legacy completions default is 16; the app decides).
    ``logprobs``/``top_logprobs`` follow metallic's meaning: ``logprobs`` reports the chosen
    token's log-probability, ``top_logprobs`` (0..20) the alternatives; the legacy endpoint's
    integer ``logprobs`` k arrives as ``logprobs=True, top_logprobs=k``. ``response_format`` is
    in metallic's form (``metallic.constrain``) or None. ``seed`` is in [0, 2**64) (a negative
    int64 seed is taken modulo 2**64). ``echo`` (completions): each choice's text starts with
    its prompt, and with ``logprobs`` the prompt's tokens are scored too; ``max_tokens`` may
    then be 0 (score only).
    """

    kind: str
    model: str | None = None
    messages: list[dict] | None = None
    prompts: tuple[str | list[int], ...] = ()
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    response_format: dict | None = None
    n: int = 1
    min_tokens: int = 0
    echo: bool = False
    ignored: tuple[str, ...] = ()

    @property
    def wants_logprobs(self) -> bool:
        """The response reports log-probabilities."""
        return self.logprobs or self.top_logprobs > 0

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``Model.stream_generate`` (all but ``prompt``/``max_tokens``)."""
        return {
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "min_p": self.min_p,
            "repetition_penalty": self.repetition_penalty,
            "seed": self.seed,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "logit_bias": dict(self.logit_bias) or None,
            "min_tokens": self.min_tokens,
            "stop": list(self.stop) or None,
            "logprobs": self.logprobs,
            "top_logprobs": self.top_logprobs,
            "response_format": self.response_format,
        }


class _Reader:
    """Typed access to the top-level keys of one body; every failure names the key."""

    def __init__(self, body: dict, where: str) -> None:
        self.body = body
        self.where = where
        self.used: set[str] = set()

    def get(self, key: str) -> Any:
        self.used.add(key)
        return self.body.get(key)

    def fail(self, param: str, expected: str, value: Any, code: str = "invalid_type") -> APIError:
        message = f"[{self.where}] {param}: expected {expected}, got {describe(value)}"
        return APIError(400, message, param=param, code=code)

    def unsupported(self, param: str, expected: str, value: Any) -> APIError:
        message = (
            f"[{self.where}] {param}: not supported by this server: expected {expected}, "
            f"got {describe(value)}"
        )
        return APIError(400, message, param=param, code="unsupported_parameter")

    def integer(self, key: str, lo: int, hi: int, default: int | None) -> int | None:
        value = self.get(key)
        if value is None:
            return default
        expected = f"an integer in [{lo}, {hi}]"
        if not _is_int(value):
            raise self.fail(key, expected, value)
        if not lo <= value <= hi:
            raise self.fail(key, expected, value, "invalid_value")
        return value

    def number(self, key: str, lo: float, hi: float, default: float, *, open_lo=False) -> float:
        value = self.get(key)
        if value is None:
            return default
        expected = f"a number in {'(' if open_lo else '['}{lo:g}, {hi:g}]"
        if not _is_real(value):
            raise self.fail(key, expected, value)
        if not (lo < value <= hi if open_lo else lo <= value <= hi):
            raise self.fail(key, expected, value, "invalid_value")
        return float(value)

    def boolean(self, key: str, default: bool = False) -> bool:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.fail(key, "a boolean", value)
        return value

    def ignored(self) -> tuple[str, ...]:
        return tuple(sorted(str(k) for k in self.body if k not in self.used))


def _check_body(body: object, where: str) -> dict:
    if not isinstance(body, dict):
        raise APIError(400, f"[{where}] body: expected a JSON object, got {describe(body)}")
    return body


def _common(r: _Reader, n: int, least_tokens: int = 1) -> dict[str, Any]:
    """Parameters shared by both endpoints (max_tokens >= least_tokens)."""
    model = r.get("model")
    if model is not None and not isinstance(model, str):
        raise r.fail("model", "a string", model)
    max_tokens = r.integer("max_tokens", least_tokens, _INT32_MAX, None)
    max_completion = r.integer("max_completion_tokens", least_tokens, _INT32_MAX, None)
    top_k = r.integer("top_k", -1, _INT32_MAX, 0)
    seed = r.integer("seed", -(1 << 63), (1 << 64) - 1, None)
    stream = r.boolean("stream")
    out = {
        "model": model,
        "max_tokens": max_completion if max_completion is not None else max_tokens,
        "temperature": r.number("temperature", 0.0, 2.0, 1.0),
        "top_p": r.number("top_p", 0.0, 1.0, 1.0, open_lo=True),
        "top_k": 0 if top_k == -1 else top_k,  # -1: vLLM's spelling of "off"
        "min_p": r.number("min_p", 0.0, 1.0, 0.0),
        "presence_penalty": r.number("presence_penalty", -2.0, 2.0, 0.0),
        "frequency_penalty": r.number("frequency_penalty", -2.0, 2.0, 0.0),
        "repetition_penalty": r.number("repetition_penalty", 0.0, 1e6, 1.0, open_lo=True),
        "seed": None if seed is None else seed % (1 << 64),
        "logit_bias": _logit_bias(r),
        "stop": _stop(r),
        "stream": stream,
        "include_usage": _include_usage(r, stream),
        "response_format": _response_format(r),
        "n": n,
        "min_tokens": r.integer("min_tokens", 0, _INT32_MAX, 0),
    }
    # Harmless OpenAI fields, read so they are not reported as unknown.
    for key in ("user", "metadata", "store", "service_tier", "parallel_tool_calls"):
        r.get(key)
    return out


def _logit_bias(r: _Reader) -> dict[int, float]:
    value = r.get("logit_bias")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise r.fail("logit_bias", "an object mapping token ids to biases", value)
    out: dict[int, float] = {}
    for key, bias in value.items():
        if isinstance(key, str) and _TOKEN_KEY.fullmatch(key) and int(key) <= _INT32_MAX:
            token = int(key)
        elif _is_int(key) and 0 <= key <= _INT32_MAX:
            token = key
        else:
            message = (
                f"[{r.where}] logit_bias: expected keys that are token ids (decimal strings "
                f'such as "50256"), got key {json.dumps(str(key)[:60])}'
            )
            raise APIError(400, message, param="logit_bias", code="invalid_value")
        if not _is_real(bias) or not -100 <= bias <= 100:
            message = (
                f"[{r.where}] logit_bias: expected a number in [-100, 100] for token {token}, "
                f"got {describe(bias)}"
            )
            raise APIError(400, message, param="logit_bias", code="invalid_value")
        out[token] = float(bias)
    return out


def _stop(r: _Reader) -> tuple[str, ...]:
    value = r.get("stop")
    if value is None:
        return ()
    if isinstance(value, str):
        if not value:
            raise r.fail("stop", "a non-empty string", value, "invalid_value")
        return (value,)
    if not isinstance(value, list):
        raise r.fail("stop", "a string or an array of up to 4 strings", value)
    if len(value) > 4:
        raise r.fail("stop", "an array of up to 4 strings", value, "invalid_value")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise r.fail(f"stop[{i}]", "a non-empty string", item)
    return tuple(value)


def _include_usage(r: _Reader, stream: bool) -> bool:
    value = r.get("stream_options")
    if value is None:
        return False
    if not isinstance(value, dict):
        raise r.fail("stream_options", "an object", value)
    if not stream:
        raise r.fail("stream_options", "it only together with stream=true", value, "invalid_value")
    usage = value.get("include_usage")
    if usage is None:
        return False
    if not isinstance(usage, bool):
        raise r.fail("stream_options.include_usage", "a boolean", usage)
    return usage


def _response_format(r: _Reader) -> dict | None:
    value = r.get("response_format")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise r.fail("response_format", 'an object such as {"type": "json_object"}', value)
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind != "json_schema":
        expected = '"text", "json_object" or "json_schema"'
        raise r.fail("response_format.type", expected, kind, "invalid_value")
    spec = value.get("json_schema")
    if not isinstance(spec, dict):
        raise r.fail("response_format.json_schema", 'an object with a "schema"', spec)
    name = spec.get("name")
    if name is not None and not isinstance(name, str):
        raise r.fail("response_format.json_schema.name", "a string", name)
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise r.fail("response_format.json_schema.strict", "a boolean", strict)
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        raise r.fail("response_format.json_schema.schema", "a JSON schema object", schema)
    return {"type": "json_schema", "schema": schema}


def _refuse_unless(r: _Reader, key: str, allowed: tuple, expected: str) -> None:
    """400 unless ``body[key]`` is null/absent, empty, or one of ``allowed``."""
    value = r.get(key)
    if value is None or value in allowed or (isinstance(value, (list, dict)) and not value):
        return
    raise r.unsupported(key, expected, value)


_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def _messages(r: _Reader) -> list[dict]:
    value = r.get("messages")
    if not isinstance(value, list) or not value:
        code = "missing_required_parameter" if value is None else "invalid_type"
        raise r.fail("messages", "a non-empty array of message objects", value, code)
    out = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise r.fail(where, 'an object {"role": ..., "content": ...}', message)
        role = message.get("role")
        if role in ("tool", "function"):
            expected = '"system", "developer", "user" or "assistant" (no tool calling)'
            raise r.unsupported(f"{where}.role", expected, role)
        if role not in _ROLES:
            expected = '"system", "developer", "user" or "assistant"'
            raise r.fail(f"{where}.role", expected, role, "invalid_value")
        for key in ("tool_calls", "function_call", "audio"):
            extra = message.get(key)
            if extra is not None and extra != []:
                raise r.unsupported(f"{where}.{key}", "it absent", extra)
        content = _content(r, where, message.get("content"), role)
        out.append({"role": _ROLES[role], "content": content})
    return out


def _content(r: _Reader, where: str, content: Any, role: str) -> str:
    if isinstance(content, str):
        return content
    if content is None and role == "assistant":
        return ""
    if not isinstance(content, list):
        raise r.fail(f"{where}.content", "a string or an array of text parts", content)
    texts = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        if not isinstance(part, dict):
            raise r.fail(at, 'an object {"type": "text", "text": ...}', part)
        kind = part.get("type")
        if kind != "text":
            raise r.unsupported(f"{at}.type", '"text" (the only content part supported)', kind)
        text = part.get("text")
        if not isinstance(text, str):
            raise r.fail(f"{at}.text", "a string", text)
        texts.append(text)
    return "\n".join(texts)


def _token_ids(r: _Reader, param: str, value: list) -> list[int]:
    for i, token in enumerate(value):
        if not _is_int(token) or not 0 <= token <= _INT32_MAX:
            raise r.fail(f"{param}[{i}]", f"a token id (an integer in [0, {_INT32_MAX}])", token)
    return list(value)


def _prompts(r: _Reader) -> tuple[str | list[int], ...]:
    """OpenAI's four prompt forms: a string, token ids, or an array of either."""
    value = r.get("prompt")
    expected = "a string, an array of strings, an array of token ids or an array of such arrays"
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not value:
        code = "missing_required_parameter" if value is None else "invalid_type"
        raise r.fail("prompt", expected, value, code)
    if not isinstance(value[0], (str, list)):
        return (_token_ids(r, "prompt", value),)
    if len(value) > MAX_CHOICES:
        raise r.fail("prompt", f"at most {MAX_CHOICES} prompts", value, "invalid_value")
    out: list[str | list[int]] = []
    for i, single in enumerate(value):
        if isinstance(single, str):
            out.append(single)
        elif not isinstance(single, list) or not single:
            raise r.fail(f"prompt[{i}]", "a string or a non-empty array of token ids", single)
        else:
            out.append(_token_ids(r, f"prompt[{i}]", single))
    return tuple(out)


def parse_chat(body: dict) -> ParsedRequest:
    """Validates a ``POST /v1/chat/completions`` body."""
    r = _Reader(_check_body(body, CHAT), CHAT)
    messages = _messages(r)
    n = r.integer("n", 1, 16, 1)
    common = _common(r, n)
    logprobs = r.boolean("logprobs")
    top = r.integer("top_logprobs", 0, 20, None)
    if top and not logprobs:
        raise r.fail("top_logprobs", "it only together with logprobs=true", top, "invalid_value")
    _refuse_unless(r, "tools", (), "no tools")
    _refuse_unless(r, "functions", (), "no functions")
    _refuse_unless(r, "tool_choice", ("none", "auto"), '"none" or "auto"')
    _refuse_unless(r, "function_call", ("none", "auto"), '"none" or "auto"')
    _refuse_unless(r, "audio", (), "it absent")
    _refuse_unless(r, "prediction", (), "it absent")
    _refuse_unless(r, "web_search_options", (), "it absent")
    modalities = r.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise r.unsupported("modalities", '["text"]', modalities)
    for key in ("reasoning_effort", "verbosity", "prompt_cache_key", "safety_identifier"):
        r.get(key)
    return ParsedRequest(
        kind="chat",
        messages=messages,
        logprobs=logprobs,
        top_logprobs=top or 0,
        ignored=r.ignored(),
        **common,
    )


def parse_completion(body: dict) -> ParsedRequest:
    """Validates a ``POST /v1/completions`` body (the legacy text-completion endpoint)."""
    r = _Reader(_check_body(body, COMPLETIONS), COMPLETIONS)
    prompts = _prompts(r)
    n = r.integer("n", 1, 16, 1)
    if len(prompts) * n > MAX_CHOICES:
        raise r.fail("n", f"prompts x n at most {MAX_CHOICES}", n, "invalid_value")
    echo = r.boolean("echo")
    common = _common(r, n, least_tokens=0 if echo else 1)
    top = r.integer("logprobs", 0, 20, None)
    best_of = r.integer("best_of", 1, 16, None)
    if best_of is not None and best_of != n:
        raise r.unsupported("best_of", f"it absent or equal to n ({n})", best_of)
    suffix = r.get("suffix")
    if suffix is not None and not isinstance(suffix, str):
        raise r.fail("suffix", "a string", suffix)
    if suffix:
        raise r.unsupported("suffix", "it absent or empty", suffix)
    return ParsedRequest(
        kind="completion",
        prompts=prompts,
        echo=echo,
        logprobs=top is not None,
        top_logprobs=top or 0,
        ignored=r.ignored(),
        **common,
    )
