"""Constrained decoding (src/metallic/constrain.py + the native sampler mask).

The tiny random-weight model has no wish to write JSON, which makes it the harsh case: every
token it emits under a constraint comes from the mask. Schemas are bounded (string lengths,
array sizes, number ranges) so each output is complete well within max_tokens, and every output
must parse and validate.
"""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import metallic
from metallic import errors

pytest.importorskip("llguidance")
jsonschema = pytest.importorskip("jsonschema")
tiny_models = pytest.importorskip("tiny_models")

SLOW_OK = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    m = tiny_models.make_model(tmp_path_factory.mktemp("cd"), "llama", "q8_0", "gguf")
    with metallic.load(m.path, device="cpu", threads=2, context_length=512) as model:
        yield model


_NAMES = st.text(alphabet="abcdefgh_", min_size=1, max_size=6)
_LEAF = st.one_of(
    st.builds(lambda n: {"type": "string", "maxLength": n}, st.integers(0, 5)),
    st.builds(
        lambda lo, span: {"type": "integer", "minimum": lo, "maximum": lo + span},
        st.integers(-50, 50),
        st.integers(0, 100),
    ),
    st.just({"type": "boolean"}),
    st.just({"type": "null"}),
    st.builds(
        lambda vals: {"enum": vals},
        st.lists(
            st.one_of(st.integers(-9, 9), st.text("xyz", max_size=3)),
            min_size=1,
            max_size=4,
            unique=True,
        ),
    ),
)


def _object(children):
    return st.builds(
        lambda props: {
            "type": "object",
            "properties": props,
            "required": sorted(props),
            "additionalProperties": False,
        },
        st.dictionaries(_NAMES, children, min_size=1, max_size=3),
    )


_SCHEMA = st.recursive(
    _LEAF,
    lambda children: st.one_of(
        _object(children),
        st.builds(
            lambda it, n: {"type": "array", "items": it, "maxItems": n}, children, st.integers(0, 3)
        ),
    ),
    max_leaves=6,
)


@SLOW_OK
@given(schema=_SCHEMA, seed=st.integers(0, 2**32), temperature=st.sampled_from([0.0, 1.0]))
def test_every_output_validates_against_its_schema(tiny, schema, seed, temperature):
    rs = list(
        tiny.stream_generate(
            "x",
            max_tokens=400,
            temperature=temperature,
            seed=seed,
            response_format={"type": "json_schema", "schema": schema},
        )
    )
    text = "".join(r.text for r in rs)
    assert rs[-1].finish_reason == "stop", (schema, text)
    jsonschema.validate(json.loads(text), schema)


@SLOW_OK
@given(seed=st.integers(0, 2**32))
def test_regex_outputs_match(tiny, seed):
    rx = r"[0-9]{3}-[a-z]{2,4}(\.[A-Z])?"
    rs = list(
        tiny.stream_generate(
            "x",
            max_tokens=60,
            temperature=1.0,
            seed=seed,
            response_format={"type": "regex", "regex": rx},
        )
    )
    text = "".join(r.text for r in rs)
    assert re.fullmatch(rx, text), text
    assert rs[-1].finish_reason == "stop"


def test_json_object_and_openai_nesting(tiny):
    rs = list(
        tiny.stream_generate(
            "x", max_tokens=300, temperature=1.0, seed=3, response_format={"type": "json_object"}
        )
    )
    text = "".join(r.text for r in rs)
    assert text.startswith("{")
    if rs[-1].finish_reason == "stop":  # any keys are allowed: the random model may go on
        assert isinstance(json.loads(text), dict)
    schema = {
        "type": "object",
        "properties": {"a": {"type": "boolean"}},
        "required": ["a"],
        "additionalProperties": False,
    }
    out = tiny.generate(
        "x",
        max_tokens=50,
        response_format={"type": "json_schema", "json_schema": {"name": "t", "schema": schema}},
    )
    assert json.loads(out) in ({"a": True}, {"a": False})


def test_smollm2_json_schema(smollm2):
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 20},
            "population": {"type": "integer", "minimum": 0, "maximum": 10**8},
        },
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    rs = list(
        smollm2.stream_chat(
            [{"role": "user", "content": "Give the largest city of France as JSON."}],
            max_tokens=80,
            response_format={"type": "json_schema", "schema": schema},
        )
    )
    out = "".join(r.text for r in rs)
    assert rs[-1].finish_reason == "stop", out
    jsonschema.validate(json.loads(out), schema)


@pytest.mark.parametrize(
    "fmt, what",
    [
        ("json", "response_format"),
        ({"type": "yaml"}, "response_format.type"),
        ({"type": "regex"}, "response_format.regex"),
        ({"type": "regex", "regex": "[0-9"}, "response_format: expected a valid grammar"),
        ({"type": "json_schema"}, "response_format.schema"),
        ({"type": "json_schema", "schema": {"type": "nope"}}, "response_format: expected a valid"),
    ],
)
def test_bad_response_formats_are_invalid_argument(tiny, fmt, what):
    with pytest.raises(errors.InvalidArgument, match=rf"^\[constrain\] {re.escape(what)}"):
        tiny.generate("x", max_tokens=2, response_format=fmt)


def test_constraint_does_not_leak_into_the_next_call(tiny):
    free = tiny.generate([5, 6, 7], max_tokens=5)
    tiny.generate([5, 6, 7], max_tokens=5, response_format={"type": "regex", "regex": "[0-9]+"})
    assert tiny.generate([5, 6, 7], max_tokens=5) == free


def test_gemma3_sentencepiece_json_schema(gemma3_path):
    # A GGUF SentencePiece vocabulary runs on the native tokenizer: llguidance gets the token
    # bytes and our encoder instead of an HF tokenizer JSON.
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "integer", "minimum": 0, "maximum": 100}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    with metallic.load(gemma3_path, device="cpu", threads=2, context_length=256) as model:
        out = model.generate(
            "2 + 2 = ", max_tokens=20, response_format={"type": "json_schema", "schema": schema}
        )
    jsonschema.validate(json.loads(out), schema)
