"""The server's HTTP errors and body decoder (``metallic.server.api_errors``).

``parse_json_body`` turns any bytes into a dict or an APIError (400, or 413 over the size limit);
``APIError.body()`` is OpenAI's error object, read back here by the ``openai`` SDK (the
independent reference) through a mock transport; ``api_error_from`` maps metallic's typed errors
to statuses without leaking the text of unexpected exceptions.
"""

from __future__ import annotations

import json

import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metallic import errors
from metallic.server.api_errors import APIError, api_error_from, parse_json_body

try:  # the openai SDK 3.x is built on httpx2; 1.x on httpx
    import httpx2 as httpx
except ImportError:
    import httpx

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
USER = [{"role": "user", "content": "hi"}]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@FAST
@given(st.binary(max_size=64) | json_values.map(lambda v: json.dumps(v).encode()))
def test_json_body_decoder_only_raises_api_error(raw):
    try:
        body = parse_json_body(raw)
    except APIError as exc:
        assert exc.status == 400 and exc.message.startswith("[request] body: expected")
    else:
        assert isinstance(body, dict) and body == json.loads(raw)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"", "got an empty body"),
        (b"  \n", "got an empty body"),
        (b"[1, 2]", "got array of 2 items"),
        (b'"x"', 'got string "x"'),
        (b"{", "expected valid JSON, got an error"),
        (b'{"a": NaN}', "NaN is not valid JSON"),
        (b'{"a": -Infinity}', "-Infinity is not valid JSON"),
        (b'{"a": "\xff"}', "expected valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "expected valid JSON"),
        (b'{"a": ' + b"9" * 5000 + b"}", "expected valid JSON"),
    ],
)
def test_json_body_errors(raw, fragment):
    with pytest.raises(APIError) as info:
        parse_json_body(raw)
    assert info.value.status == 400 and fragment in info.value.message


def test_json_body_size_limit():
    assert parse_json_body(b'{"a": 1}', max_bytes=8) == {"a": 1}
    with pytest.raises(APIError) as info:
        parse_json_body(b'{"a": 10}', max_bytes=8)
    assert info.value.status == 413 and info.value.code == "request_too_large"
    assert info.value.message == "[request] body: expected at most 8 bytes, got 9"


def test_api_error_shape_and_default_types():
    exc = APIError(400, "bad", param="x", code="invalid_value")
    assert str(exc) == "bad"
    assert exc.body() == {
        "error": {
            "message": "bad",
            "type": "invalid_request_error",
            "param": "x",
            "code": "invalid_value",
        }
    }
    for status, kind in [
        (401, "authentication_error"),
        (404, "not_found_error"),
        (413, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "server_error"),
        (503, "server_error"),
    ]:
        assert APIError(status, "m").type == kind
    for bad in ({"status": 200}, {"status": True}, {"status": 400, "type": "oops"}):
        with pytest.raises(errors.InvalidArgument, match=r"^\[server\] APIError"):
            APIError(bad["status"], "m", type=bad.get("type"))


def test_api_error_from_metallic_errors():
    cases = [
        (errors.ContextOverflow("[generate] c"), 400, "context_length_exceeded"),
        (errors.InvalidArgument("[sampling] x"), 400, "invalid_value"),
        (errors.NotImplementedFeature("[constrain] y"), 400, "not_implemented"),
        (errors.Busy("[generate] z"), 429, "server_busy"),
        (errors.OutOfMemory("[engine] m"), 503, "unavailable"),
        (errors.Closed("[model] c"), 503, "unavailable"),
        (errors.KernelFailure("[cpu] k"), 500, "internal_error"),
    ]
    for exc, status, code in cases:
        api = api_error_from(exc)
        assert (api.status, api.code, api.message) == (status, code, str(exc))
    hidden = api_error_from(KeyError("/secret/path"))
    assert hidden.status == 500 and "secret" not in hidden.message and "KeyError" in hidden.message
    same = APIError(404, "no such model", param="model")
    assert api_error_from(same) is same


@pytest.mark.parametrize(
    ("status", "sdk_error"),
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (404, openai.NotFoundError),
        (413, openai.APIStatusError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
    ],
)
def test_openai_sdk_reads_the_error_body(status, sdk_error):
    """The SDK (the reference client) surfaces message, type, param and code."""
    exc = APIError(status, f"[x] thing: expected y, got z ({status})", param="thing", code="c")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(exc.status, json=exc.body())

    client = openai.OpenAI(
        api_key="k",
        base_url="http://test/v1",
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
    )
    with pytest.raises(sdk_error) as info:
        client.chat.completions.create(model="m", messages=USER)
    assert info.value.status_code == status
    assert info.value.message.endswith(exc.message)  # the SDK prefixes "Error code: N - "
    assert (info.value.type, info.value.param, info.value.code) == (exc.type, "thing", "c")
