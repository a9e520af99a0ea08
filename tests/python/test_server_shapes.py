"""Response objects and SSE frames of the server (``metallic.server.shapes``).

The independent reference is the official ``openai`` SDK: each object is validated by its
pydantic type, checked to carry no field the type lacks and every field it requires (at every
level), dumped back unchanged, and the SSE bytes are read by the SDK's own client (through a mock
transport) and its stream accumulator.
"""

from __future__ import annotations

import json
import math
import typing

import openai
import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types import Completion, CompletionUsage, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from metallic import errors
from metallic.server import shapes
from metallic.server.api_errors import APIError

try:  # the openai SDK 3.x is built on httpx2; 1.x on httpx
    import httpx2 as httpx
except ImportError:
    import httpx

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CREATED = 1_700_000_000


def _models_in(annotation) -> list[type[pydantic.BaseModel]]:
    """The pydantic model classes inside an annotation (Optional, List, Union, Dict values)."""
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return [annotation]
    found = []
    for arg in typing.get_args(annotation):
        found += _models_in(arg)
    return found


def strict_check(model: type[pydantic.BaseModel], obj) -> None:
    """Every key of ``obj`` is a field of ``model``, every required field is there; recursive."""
    assert isinstance(obj, dict), f"{model.__name__}: expected an object, got {obj!r}"
    fields = model.model_fields
    extra = set(obj) - set(fields)
    assert not extra, f"{model.__name__}: fields OpenAI does not have: {extra}"
    missing = {name for name, f in fields.items() if f.is_required()} - set(obj)
    assert not missing, f"{model.__name__}: required fields missing: {missing}"
    for name, value in obj.items():
        inner = _models_in(fields[name].annotation)
        if not inner or value is None:
            continue
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict):
                candidates = [m for m in inner if set(item) <= set(m.model_fields)]
                assert candidates, f"{model.__name__}.{name}: no type matches {item!r}"
                strict_check(candidates[0], item)


def validate(model: type[pydantic.BaseModel], obj: dict) -> None:
    strict_check(model, obj)
    parsed = model.model_validate(obj)
    assert parsed.model_dump(mode="json", exclude_unset=True) == obj


def sdk_client(payload: bytes, status: int = 200, stream: bool = False) -> openai.OpenAI:
    content_type = "text/event-stream" if stream else "application/json"

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=payload, headers={"content-type": content_type})

    return openai.OpenAI(
        api_key="k",
        base_url="http://test/v1",
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
    )


ENTRIES = [("Hel", -0.25, [("Hel", -0.25), ("Hi", -1.5)]), (b"\xe2\x80", -math.inf, [])]


# ----------------------------------------------------------------------------- chat


def test_chat_completion_matches_openai():
    logprobs = shapes.chat_logprobs(ENTRIES)
    obj = shapes.chat_completion(
        "chatcmpl-1",
        CREATED,
        "smollm2",
        [
            shapes.chat_choice(0, "Hello", "stop", logprobs),
            shapes.chat_choice(1, "Hi there", "length"),
        ],
        shapes.usage(12, 5, cached_tokens=4),
    )
    validate(ChatCompletion, obj)
    assert obj["object"] == "chat.completion" and obj["usage"]["total_tokens"] == 17
    assert obj["usage"]["prompt_tokens_details"]["cached_tokens"] == 4
    first, second = logprobs["content"]
    assert first == {
        "token": "Hel",
        "logprob": -0.25,
        "bytes": [72, 101, 108],
        "top_logprobs": [
            {"token": "Hel", "logprob": -0.25, "bytes": [72, 101, 108]},
            {"token": "Hi", "logprob": -1.5, "bytes": [72, 105]},
        ],
    }
    # A partial UTF-8 token: escapes in the text, its real bytes, -inf as OpenAI's -9999.
    assert second == {
        "token": "\\xe2\\x80",
        "logprob": -9999.0,
        "bytes": [0xE2, 0x80],
        "top_logprobs": [],
    }

    response = sdk_client(json.dumps(obj).encode()).chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "x"}]
    )
    assert response.choices[0].message.content == "Hello"
    assert response.choices[1].finish_reason == "length"


def chat_stream(include_usage: bool) -> list[dict]:
    """Two interleaved choices as the app streams them."""
    args = ("chatcmpl-2", CREATED, "smollm2")
    kw = {"include_usage": include_usage}
    chunks = [
        shapes.chat_chunk(*args, [shapes.chat_chunk_choice(i, role=True)], **kw) for i in (0, 1)
    ]
    for text in ("Hel", "lo"):
        for i in (0, 1):
            lp = shapes.chat_logprobs([(text, -0.5, [(text, -0.5)])])
            choice = shapes.chat_chunk_choice(i, content=f"{text}{i}", logprobs=lp)
            chunks.append(shapes.chat_chunk(*args, [choice], **kw))
    for i, reason in ((0, "stop"), (1, "length")):
        chunks.append(shapes.chat_chunk(*args, [shapes.chat_chunk_choice(i, reason=reason)], **kw))
    if include_usage:
        chunks.append(shapes.chat_usage_chunk(*args, shapes.usage(3, 4)))
    return chunks


@pytest.mark.parametrize("include_usage", [False, True])
def test_chat_chunks_match_openai(include_usage):
    chunks = chat_stream(include_usage)
    for chunk in chunks:
        validate(ChatCompletionChunk, chunk)
        assert chunk["object"] == "chat.completion.chunk"
        assert ("usage" in chunk) == include_usage
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[2]["choices"][0]["delta"] == {"content": "Hel0"}
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert [c["choices"][0]["delta"] for c in finals] == [{}, {}]
    if include_usage:
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4
        assert all(c["usage"] is None for c in chunks[:-1])

    state = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    final = state.current_completion_snapshot  # get_final_completion refuses "length"
    assert [c.message.content for c in final.choices] == ["Hel0lo0", "Hel1lo1"]
    assert [c.finish_reason for c in final.choices] == ["stop", "length"]
    assert len(final.choices[0].logprobs.content) == 2


def test_sdk_client_reads_the_sse_stream():
    chunks = chat_stream(True)
    payload = b"".join(shapes.sse(c) for c in chunks) + shapes.SSE_DONE
    stream = sdk_client(payload, stream=True).chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "x"}], stream=True
    )
    received = [chunk.model_dump(mode="json", exclude_unset=True) for chunk in stream]
    assert received == chunks


# ----------------------------------------------------------------------------- completions


def test_text_completion_matches_openai():
    logprobs = shapes.completion_logprobs(ENTRIES, text_offset=0)
    obj = shapes.text_completion(
        "cmpl-1",
        CREATED,
        "smollm2",
        [shapes.completion_choice(0, "Hel\\xe2\\x80", "stop", logprobs)],
        shapes.usage(3, 2),
    )
    validate(Completion, obj)
    assert logprobs == {
        "tokens": ["Hel", "\\xe2\\x80"],
        "token_logprobs": [-0.25, -9999.0],
        "top_logprobs": [{"Hel": -0.25, "Hi": -1.5}, {}],
        "text_offset": [0, 3],
    }
    no_top = shapes.completion_logprobs([("a", -1.0, None), ("bc", -2.0, None)], text_offset=10)
    assert no_top["top_logprobs"] is None and no_top["text_offset"] == [10, 11]
    response = sdk_client(json.dumps(obj).encode()).completions.create(model="m", prompt="x")
    assert response.choices[0].logprobs.tokens == ["Hel", "\\xe2\\x80"]


@pytest.mark.parametrize("include_usage", [False, True])
def test_text_completion_chunks(include_usage):
    args = ("cmpl-2", CREATED, "smollm2")
    chunks = [
        shapes.text_completion_chunk(
            *args, [shapes.completion_choice(0, "Hel")], include_usage=include_usage
        ),
        shapes.text_completion_chunk(
            *args, [shapes.completion_choice(0, "", "length")], include_usage=include_usage
        ),
    ]
    if include_usage:
        chunks.append(shapes.text_completion_usage_chunk(*args, shapes.usage(1, 2)))
    for chunk in chunks:
        assert chunk["object"] == "text_completion" and ("usage" in chunk) == include_usage
        # OpenAI streams "finish_reason": null until the end, which the SDK's type (shared with
        # the non-streamed object) does not allow: validate with the final value in its place.
        pending = [c for c in chunk["choices"] if c["finish_reason"] is None]
        patched = {
            **chunk,
            "choices": [
                {**c, "finish_reason": c["finish_reason"] or "stop"} for c in chunk["choices"]
            ],
        }
        validate(Completion, patched)
        assert all(set(c) == {"index", "text", "logprobs", "finish_reason"} for c in pending)
    payload = b"".join(shapes.sse(c) for c in chunks) + shapes.SSE_DONE
    stream = sdk_client(payload, stream=True).completions.create(model="m", prompt="x", stream=True)
    assert [c.model_dump(mode="json", exclude_unset=True) for c in stream] == chunks


# ----------------------------------------------------------------------------- pieces


def test_usage_and_model_list():
    validate(CompletionUsage, shapes.usage(0, 0))
    for bad in ((-1, 0, 0), (1, True, 0), (1, 1, 2), (1.0, 1, 0)):
        with pytest.raises(errors.InvalidArgument, match=r"^\[server\] usage\."):
            shapes.usage(*bad)
    listing = shapes.model_list(["smollm2", "gemma3"], CREATED)
    assert listing["object"] == "list"
    for entry in listing["data"]:
        validate(Model, entry)


def test_finish_reasons_and_ids():
    assert shapes.finish_reason("stop") == "stop" and shapes.finish_reason("length") == "length"
    for bad in ("cancelled", None, "eos"):
        with pytest.raises(errors.InvalidArgument, match=r"^\[server\] finish_reason"):
            shapes.finish_reason(bad)
    with pytest.raises(errors.InvalidArgument):
        shapes.chat_chunk_choice(0, reason="cancelled")
    a, b = shapes.new_id("chat"), shapes.new_id("chat")
    assert a.startswith("chatcmpl-") and a != b and shapes.new_id("completion").startswith("cmpl-")
    with pytest.raises(errors.InvalidArgument):
        shapes.new_id("embedding")


def test_logprob_values():
    for bad in (math.nan, 0.5, True, "x"):
        with pytest.raises(errors.InvalidArgument, match=r"^\[server\] logprob"):
            shapes.chat_logprobs([("a", bad, None)])
    entry = shapes.chat_logprobs([("a", 1e-9, [("b", -1e5)])])["content"][0]
    assert entry["logprob"] == 0.0 and entry["top_logprobs"][0]["logprob"] == -9999.0
    with pytest.raises(errors.InvalidArgument, match=r"expected str or bytes"):
        shapes.chat_logprobs([(3, -1.0, None)])


def test_sse_framing():
    frame = shapes.sse({"text": "héllo ✓\n", "n": [1, 2]})
    assert frame == 'data: {"text":"héllo ✓\\n","n":[1,2]}\n\n'.encode()
    assert shapes.SSE_DONE == b"data: [DONE]\n\n"
    error = shapes.sse(APIError(400, "bad").body())
    assert json.loads(error[6:]) == {
        "error": {"message": "bad", "type": "invalid_request_error", "param": None, "code": None}
    }
    with pytest.raises(errors.InvalidArgument, match=r"^\[server\] sse"):
        shapes.sse({"x": math.inf})
    with pytest.raises(errors.InvalidArgument, match=r"^\[server\] sse"):
        shapes.sse({"x": object()})
    lone = shapes.sse({"t": "a\ud800b"})  # not encodable as UTF-8: ASCII escapes instead
    assert lone == b'data: {"t":"a\\ud800b"}\n\n'


@FAST
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda x: st.lists(x, max_size=3) | st.dictionaries(st.text(max_size=5), x, max_size=3),
        max_leaves=10,
    )
)
def test_sse_round_trips(obj):
    frame = shapes.sse(obj)
    assert frame.startswith(b"data: ") and frame.endswith(b"\n\n")
    body = frame[6:-2]
    assert b"\n" not in body and b"\r" not in body  # one data line per event
    assert json.loads(body.decode("utf-8")) == obj
