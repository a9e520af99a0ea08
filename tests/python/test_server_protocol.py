"""Request parsing of the OpenAI-compatible server (``metallic.server.protocol``).

Properties: any JSON-ish body ends in a ParsedRequest or an APIError (400, ``param`` set, the
message naming it), never another exception; valid bodies give back exactly their values. Then
one explicit case per parameter error, the message conversions (content parts, roles), the
prompt forms, response_format and the refused features. The body decoder and APIError are in
``test_server_api_errors.py``.
"""

from __future__ import annotations

import inspect
import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metallic.model import Model
from metallic.server.protocol import (
    APIError,
    ParsedRequest,
    parse_chat,
    parse_completion,
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
USER = [{"role": "user", "content": "hi"}]
CHAT_TAG = "[/v1/chat/completions]"

# ----------------------------------------------------------------------------- properties

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 70), max_value=1 << 70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
KEYS = [
    "model", "messages", "prompt", "max_tokens", "max_completion_tokens", "temperature",
    "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty",
    "seed", "logit_bias", "stop", "stream", "stream_options", "logprobs", "top_logprobs",
    "response_format", "n", "min_tokens", "tools", "tool_choice", "functions", "echo",
    "suffix", "best_of", "user", "modalities", "unknown",
]  # fmt: skip
part = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image_url", 3]), "text": json_values}
)
message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["system", "developer", "user", "assistant", "tool", "x", None]),
        "content": st.text(max_size=5) | st.lists(part, max_size=3) | json_values,
    }
)
bodies = st.dictionaries(st.sampled_from(KEYS), json_values, max_size=8).flatmap(
    lambda d: st.fixed_dictionaries(
        {
            "messages": st.just(USER) | st.lists(message, max_size=3) | json_values,
            "prompt": st.just("x") | json_values,
        }
    ).map(lambda extra: {**extra, **d})
)


def _check_error(exc: APIError) -> None:
    assert exc.status == 400 and exc.type == "invalid_request_error"
    assert exc.message.startswith(("[/v1/chat/completions] ", "[/v1/completions] "))
    if exc.param is not None:
        assert exc.param in exc.message
    json.dumps(exc.body(), allow_nan=False)


@FAST
@given(bodies | json_values)
def test_any_body_parses_or_raises_api_error(body):
    for parse in (parse_chat, parse_completion):
        try:
            parsed = parse(body)
        except APIError as exc:
            _check_error(exc)
        else:
            assert isinstance(parsed, ParsedRequest)
            assert 1 <= parsed.n <= 16 and 0 <= parsed.temperature <= 2


@FAST
@given(st.sampled_from(KEYS[2:]), json_values)
def test_an_error_names_the_key_that_caused_it(key, value):
    """One key set to a random value on an otherwise valid body: valid, or blamed on that key."""
    for parse, base in ((parse_chat, {"messages": USER}), (parse_completion, {"prompt": "x"})):
        body = {**base, key: value}
        if key == "stream_options":
            body["stream"] = True
        try:
            parse(body)
        except APIError as exc:
            _check_error(exc)
            assert exc.param is not None and exc.param.startswith(key)


ints = st.integers
valid = st.fixed_dictionaries(
    {},
    optional={
        "model": st.text(max_size=10),
        "max_tokens": ints(1, (1 << 31) - 1),
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0, 1, exclude_min=True),
        "top_k": ints(0, 1000),
        "min_p": st.floats(0, 1),
        "presence_penalty": st.floats(-2, 2),
        "frequency_penalty": st.floats(-2, 2),
        "repetition_penalty": st.floats(1e-3, 10),
        "seed": ints(0, (1 << 64) - 1),
        "logit_bias": st.dictionaries(
            ints(0, 1 << 20).map(str), st.floats(-100, 100) | ints(-100, 100), max_size=4
        ),
        "stop": st.lists(st.text(min_size=1, max_size=5), max_size=4),
        "stream": st.booleans(),
        "n": ints(1, 16),
        "min_tokens": ints(0, 100),
    },
)


@FAST
@given(valid, st.lists(st.text(max_size=20), min_size=1, max_size=4))
def test_valid_chat_bodies_round_trip(body, texts):
    messages = [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(texts)]
    parsed = parse_chat({**body, "messages": messages})
    assert parsed.kind == "chat" and parsed.messages == messages and parsed.prompts == ()
    defaults = ParsedRequest(kind="chat")
    for key in ("model", "max_tokens", "top_k", "seed", "stream", "n", "min_tokens"):
        assert getattr(parsed, key) == body.get(key, getattr(defaults, key))
    for key in ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty"):
        value = getattr(parsed, key)
        assert isinstance(value, float) and value == body.get(key, getattr(defaults, key))
    expected_bias = {int(k): float(v) for k, v in body.get("logit_bias", {}).items()}
    assert parsed.logit_bias == expected_bias
    assert parsed.stop == tuple(body.get("stop", ()))
    assert parsed.ignored == ()


@FAST
@given(st.text(max_size=30) | st.lists(ints(0, (1 << 31) - 1), min_size=1, max_size=20))
def test_valid_prompts_round_trip(prompt):
    assert parse_completion({"prompt": prompt}).prompts == (prompt,)
    assert parse_completion({"prompt": [prompt]}).prompts == (prompt,)
    assert parse_completion({"prompt": [prompt, prompt]}).prompts == (prompt, prompt)


# ----------------------------------------------------------------------------- one error each


def chat_error(**fields) -> APIError:
    with pytest.raises(APIError) as info:
        parse_chat({"messages": USER, **fields})
    _check_error(info.value)
    return info.value


@pytest.mark.parametrize(
    ("fields", "param", "fragment"),
    [
        ({"max_tokens": True}, "max_tokens", "got boolean true"),
        ({"max_tokens": 0}, "max_tokens", "integer in [1, 2147483647], got integer 0"),
        ({"max_tokens": 2.0}, "max_tokens", "got number 2.0"),
        ({"max_completion_tokens": "5"}, "max_completion_tokens", 'got string "5"'),
        ({"temperature": 2.5}, "temperature", "number in [0, 2], got number 2.5"),
        ({"temperature": math.nan}, "temperature", "got number nan"),
        ({"temperature": True}, "temperature", "got boolean true"),
        ({"top_p": 0}, "top_p", "number in (0, 1]"),
        ({"top_p": math.inf}, "top_p", "got number inf"),
        ({"top_k": -2}, "top_k", "integer in [-1, "),
        ({"min_p": 1.5}, "min_p", "[0, 1]"),
        ({"presence_penalty": -3}, "presence_penalty", "[-2, 2]"),
        ({"frequency_penalty": "1"}, "frequency_penalty", "[-2, 2]"),
        ({"repetition_penalty": 0}, "repetition_penalty", "(0, "),
        ({"seed": 1 << 64}, "seed", "integer in [-9223372036854775808, 18446744073709551615]"),
        ({"seed": 1.5}, "seed", "got number 1.5"),
        ({"logit_bias": []}, "logit_bias", "got array of 0 items"),
        ({"logit_bias": {"abc": 1}}, "logit_bias", 'got key "abc"'),
        ({"logit_bias": {"-1": 1}}, "logit_bias", 'got key "-1"'),
        ({"logit_bias": {"12": 101}}, "logit_bias", "for token 12, got integer 101"),
        ({"logit_bias": {"12": True}}, "logit_bias", "got boolean true"),
        ({"stop": ""}, "stop", "non-empty string"),
        ({"stop": ["a"] * 5}, "stop", "up to 4 strings, got array of 5 items"),
        ({"stop": ["a", ""]}, "stop[1]", "non-empty string"),
        ({"stop": ["a", 1]}, "stop[1]", "got integer 1"),
        ({"stop": 3}, "stop", "got integer 3"),
        ({"stream": "yes"}, "stream", "a boolean"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "stream=true"),
        ({"stream": True, "stream_options": 1}, "stream_options", "an object"),
        (
            {"stream": True, "stream_options": {"include_usage": 1}},
            "stream_options.include_usage",
            "a boolean",
        ),
        ({"logprobs": 1}, "logprobs", "a boolean, got integer 1"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "[0, 20]"),
        ({"top_logprobs": 3}, "top_logprobs", "logprobs=true"),
        ({"n": 0}, "n", "[1, 16]"),
        ({"n": 17}, "n", "[1, 16]"),
        ({"model": 5}, "model", "a string"),
        ({"min_tokens": -1}, "min_tokens", "[0, "),
        ({"response_format": "json"}, "response_format", 'got string "json"'),
        ({"response_format": {"type": "xml"}}, "response_format.type", '"json_schema"'),
        ({"response_format": {}}, "response_format.type", "got null"),
        (
            {"response_format": {"type": "json_schema"}},
            "response_format.json_schema",
            "got null",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "response_format.json_schema.schema",
            "a JSON schema object",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": 1, "schema": {}}}},
            "response_format.json_schema.name",
            "a string",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"schema": {}, "strict": 1},
                }
            },
            "response_format.json_schema.strict",
            "a boolean",
        ),
        ({"tools": [{"type": "function"}]}, "tools", "not supported"),
        ({"functions": [{"name": "f"}]}, "functions", "not supported"),
        ({"tool_choice": "required"}, "tool_choice", "not supported"),
        ({"function_call": {"name": "f"}}, "function_call", "not supported"),
        ({"audio": {"voice": "x"}}, "audio", "not supported"),
        ({"modalities": ["text", "audio"]}, "modalities", "not supported"),
    ],
)
def test_each_param_error(fields, param, fragment):
    exc = chat_error(**fields)
    assert exc.param == param
    assert exc.message.startswith(f"{CHAT_TAG} {param}: ")
    assert fragment in exc.message
    assert exc.code in ("invalid_type", "invalid_value", "unsupported_parameter")


def test_body_not_an_object():
    for parse in (parse_chat, parse_completion):
        with pytest.raises(APIError, match=r"body: expected a JSON object, got array of 1 item$"):
            parse([1])


# ----------------------------------------------------------------------------- messages


def test_messages_roles_and_content_parts():
    parsed = parse_chat(
        {
            "messages": [
                {"role": "developer", "content": "be brief"},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                },
                {"role": "assistant", "content": None, "name": "bot"},
                {"role": "user", "content": []},
            ]
        }
    )
    assert parsed.messages == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "a\nb"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": ""},
    ]


@pytest.mark.parametrize(
    ("messages", "param", "fragment"),
    [
        (None, "messages", "got null"),
        ([], "messages", "got array of 0 items"),
        ("hi", "messages", 'got string "hi"'),
        ([1], "messages[0]", "got integer 1"),
        ([{"content": "x"}], "messages[0].role", "got null"),
        ([{"role": "robot", "content": "x"}], "messages[0].role", 'got string "robot"'),
        (
            [{"role": "tool", "content": "x", "tool_call_id": "1"}],
            "messages[0].role",
            "not supported",
        ),
        ([{"role": "function", "content": "x"}], "messages[0].role", "not supported"),
        ([{"role": "user"}], "messages[0].content", "got null"),
        ([{"role": "user", "content": 5}], "messages[0].content", "got integer 5"),
        (
            [USER[0], {"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
            "messages[1].content[0].type",
            'not supported by this server: expected "text"',
        ),
        (
            [{"role": "user", "content": [{"type": "text", "text": "a"}, "b"]}],
            "messages[0].content[1]",
            'got string "b"',
        ),
        ([{"role": "user", "content": [{"type": "text"}]}], "messages[0].content[0].text", "null"),
        (
            [{"role": "assistant", "content": "", "tool_calls": [{"id": "1"}]}],
            "messages[0].tool_calls",
            "not supported",
        ),
    ],
)
def test_message_errors(messages, param, fragment):
    with pytest.raises(APIError) as info:
        parse_chat({"messages": messages})
    _check_error(info.value)
    assert info.value.param == param and fragment in info.value.message


# ----------------------------------------------------------------------------- completions


def test_prompt_forms():
    assert parse_completion({"prompt": "x"}).prompts == ("x",)
    assert parse_completion({"prompt": ""}).prompts == ("",)
    assert parse_completion({"prompt": ["x"]}).prompts == ("x",)
    assert parse_completion({"prompt": [1, 2]}).prompts == ([1, 2],)
    assert parse_completion({"prompt": [[1, 2]]}).prompts == ([1, 2],)
    assert parse_completion({"prompt": ["a", [3], ""]}).prompts == ("a", [3], "")
    assert len(parse_completion({"prompt": ["a"] * 64, "n": 2}).prompts) == 64
    parsed = parse_completion({"prompt": "x", "logprobs": 3, "best_of": 1, "echo": False})
    assert (parsed.kind, parsed.logprobs, parsed.top_logprobs, parsed.messages) == (
        "completion",
        True,
        3,
        None,
    )
    assert parse_completion({"prompt": "x", "logprobs": 0}).logprobs is True
    assert parse_completion({"prompt": "x"}).logprobs is False
    assert parse_completion({"prompt": "x", "logprobs": 20}).top_logprobs == 20


def test_echo():
    """echo: the prompt starts each choice's text (scored with logprobs); only then may
    max_tokens be 0 (lm-evaluation-harness scores prompts with echo, logprobs, max_tokens 0)."""
    parsed = parse_completion({"prompt": "x", "echo": True, "max_tokens": 0, "logprobs": 1})
    assert (parsed.echo, parsed.max_tokens, parsed.top_logprobs) == (True, 0, 1)
    assert (
        parse_completion({"prompt": "x", "echo": True, "max_completion_tokens": 0}).max_tokens == 0
    )
    assert parse_completion({"prompt": "x"}).echo is False
    with pytest.raises(APIError) as info:
        parse_completion({"prompt": "x", "max_tokens": 0})
    assert (
        info.value.param == "max_tokens" and "[1, 2147483647], got integer 0" in info.value.message
    )


@pytest.mark.parametrize(
    ("fields", "param", "fragment"),
    [
        ({}, "prompt", "got null"),
        ({"prompt": ["a"] * 129}, "prompt", "at most 128 prompts, got array of 129 items"),
        ({"prompt": ["a"] * 65, "n": 2}, "n", "prompts x n at most 128, got integer 2"),
        ({"prompt": ["a", 1]}, "prompt[1]", "a string or a non-empty array of token ids"),
        ({"prompt": [[1], []]}, "prompt[1]", "non-empty array of token ids, got array of 0"),
        ({"prompt": []}, "prompt", "got array of 0 items"),
        ({"prompt": [[]]}, "prompt[0]", "non-empty array of token ids"),
        ({"prompt": [1, True]}, "prompt[1]", "got boolean true"),
        ({"prompt": [1, -1]}, "prompt[1]", "got integer -1"),
        ({"prompt": [[1, "a"]]}, "prompt[0][1]", 'got string "a"'),
        ({"prompt": {"a": 1}}, "prompt", "got object"),
        ({"prompt": "x", "logprobs": True}, "logprobs", "[0, 20], got boolean true"),
        ({"prompt": "x", "logprobs": 21}, "logprobs", "[0, 20]"),
        ({"prompt": "x", "echo": 1}, "echo", "a boolean"),
        ({"prompt": "x", "echo": True, "max_tokens": -1}, "max_tokens", "[0, 2147483647]"),
        ({"prompt": "x", "suffix": "end"}, "suffix", "not supported"),
        ({"prompt": "x", "suffix": 1}, "suffix", "a string"),
        ({"prompt": "x", "best_of": 3}, "best_of", "not supported"),
    ],
)
def test_completion_errors(fields, param, fragment):
    with pytest.raises(APIError) as info:
        parse_completion(fields)
    _check_error(info.value)
    assert info.value.param == param and fragment in info.value.message
    assert info.value.message.startswith(f"[/v1/completions] {param}: ")


# ----------------------------------------------------------------------------- conversions


def test_response_format_conversion():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    rf = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
    assert parse_chat({"messages": USER, "response_format": rf}).response_format == {
        "type": "json_schema",
        "schema": schema,
    }
    for given_rf, expected in [
        ({"type": "text"}, None),
        ({"type": "json_object"}, {"type": "json_object"}),
        (None, None),
    ]:
        assert (
            parse_chat({"messages": USER, "response_format": given_rf}).response_format == expected
        )
    completion = parse_completion({"prompt": "x", "response_format": {"type": "json_object"}})
    assert completion.response_format == {"type": "json_object"}


def test_defaults_extensions_and_ignored_fields():
    parsed = parse_chat(
        {
            "messages": USER,
            "max_tokens": 5,
            "max_completion_tokens": 7,
            "seed": -1,
            "top_k": -1,
            "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": False},
            "logprobs": True,
            "top_logprobs": 2,
            "stop": "END",
            **dict.fromkeys(("temperature", "top_p", "n", "user", "tools"), None),
            "metadata": {"a": "b"},
            "store": False,
            "tools": [],
            "tool_choice": "none",
            "parallel_tool_calls": True,
            "service_tier": "auto",
            "modalities": ["text"],
            "mirostat": 2,
        }
    )
    assert parsed.max_tokens == 7  # max_completion_tokens wins, as in OpenAI's API
    assert parsed.seed == (1 << 64) - 1 and parsed.top_k == 0
    assert (parsed.stream, parsed.include_usage, parsed.logprobs, parsed.top_logprobs) == (
        True,
        True,
        True,
        2,
    )
    assert parsed.stop == ("END",) and parsed.temperature == 1.0 and parsed.n == 1
    assert parsed.ignored == ("mirostat",)
    defaults = parse_chat({"messages": USER})
    assert (defaults.temperature, defaults.top_p, defaults.max_tokens, defaults.stream) == (
        1.0,
        1.0,
        None,
        False,
    )


def test_generate_kwargs_match_model_stream_generate():
    parsed = parse_chat(
        {"messages": USER, "logit_bias": {"3": -5}, "stop": ["x"], "seed": 7, "min_tokens": 2}
    )
    kwargs = parsed.generate_kwargs()
    accepted = inspect.signature(Model.stream_generate).parameters
    assert set(kwargs) <= set(accepted) and "prompt" in accepted and "max_tokens" in accepted
    assert kwargs["logit_bias"] == {3: -5.0} and kwargs["stop"] == ["x"] and kwargs["seed"] == 7
    empty = parse_chat({"messages": USER}).generate_kwargs()
    assert empty["logit_bias"] is None and empty["stop"] is None
