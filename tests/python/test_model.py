"""The public API (src/metallic/model.py, generate.py): argument validation and its typed errors,
streaming responses, stop strings, seeds, lifecycle. Numerics are in test_model_forward.py."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

import metallic
from metallic import errors

tiny_models = pytest.importorskip("tiny_models")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    m = tiny_models.make_model(tmp_path_factory.mktemp("api"), "llama", "q8_0", "gguf")
    with metallic.load(m.path, device="cpu", threads=2, context_length=64) as model:
        yield model


def _ids(model, n, seed=0):
    rng = np.random.default_rng(seed)
    return [int(t) for t in rng.integers(3, model.tokenizer.vocab_size, n)]


# ----------------------------------------------------------------------------- load arguments


@pytest.mark.parametrize(
    "kwargs, cls, tag",
    [
        ({"device": "gpu"}, errors.InvalidArgument, "device"),
        ({"threads": 0}, errors.InvalidArgument, "threads"),
        ({"threads": True}, errors.InvalidArgument, "threads"),
        ({"context_length": 1}, errors.InvalidArgument, "context_length"),
        ({"kv_cache_dtype": "q8"}, errors.InvalidArgument, "kv_cache_dtype"),
    ],
)
def test_load_rejects_bad_arguments(tmp_path, kwargs, cls, tag):
    with pytest.raises(cls, match=tag):
        metallic.load(tmp_path / "none.gguf", **kwargs)


def test_metal_device_is_unavailable_until_built(tmp_path):
    m = tiny_models.make_model(tmp_path, "llama", "f32", "gguf")
    with pytest.raises(errors.DeviceUnavailable, match="metal"):
        metallic.load(m.path, device="metal")


def test_metal_emulated_loads_when_its_library_is_built(tmp_path):
    # Without clang++-19 the emulator library is not built and the device names what is missing
    # (both cases in depth: tests/python/test_metal_emu_device.py).
    m = tiny_models.make_model(tmp_path, "llama", "f32", "gguf")
    lib = Path(metallic.__file__).resolve().parent / "libmetallic_shaders_emu.so"
    if not lib.exists() and not os.environ.get("METALLIC_EMU_LIB"):
        with pytest.raises(errors.DeviceUnavailable, match="clang\\+\\+-19"):
            metallic.load(m.path, device="metal-emulated")
        return
    with metallic.load(m.path, device="metal-emulated", context_length=16) as model:
        assert model.device == "metal-emulated"
        assert model.logits([1, 2, 3]).shape == (3, m.cfg["vocab_size"])


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(errors.FileNotFound):
        metallic.load(tmp_path / "missing.gguf")
    with pytest.raises(FileNotFoundError):  # also the builtin
        metallic.load(tmp_path / "missing.gguf")


def test_unknown_registry_name(tmp_path):
    with pytest.raises(errors.InvalidArgument, match="smollm2"):
        metallic.load("no-such-model")


# ----------------------------------------------------------------------------- generation arguments


@pytest.mark.parametrize(
    "kwargs, cls, name",
    [
        ({"max_tokens": 0}, errors.InvalidArgument, "max_tokens"),
        ({"max_tokens": -3}, errors.InvalidArgument, "max_tokens"),
        ({"temperature": -0.1}, errors.InvalidArgument, "temperature"),
        ({"temperature": float("nan")}, errors.InvalidArgument, "temperature"),
        ({"top_k": -1}, errors.InvalidArgument, "top_k"),
        ({"top_p": 0.0}, errors.InvalidArgument, "top_p"),
        ({"top_p": 1.5}, errors.InvalidArgument, "top_p"),
        ({"min_p": 2.0}, errors.InvalidArgument, "min_p"),
        ({"repetition_penalty": 0.0}, errors.InvalidArgument, "repetition_penalty"),
        ({"seed": -1}, errors.InvalidArgument, "seed"),
        ({"stop": [""]}, errors.InvalidArgument, "stop"),
        ({"stop": 3}, errors.InvalidArgument, "stop"),
    ],
)
def test_generate_rejects_bad_parameters(tiny, kwargs, cls, name):
    with pytest.raises(cls, match=name):
        tiny.generate("hello", **kwargs)


@pytest.mark.parametrize("prompt", ["", [], 3.5, [1, "a"], [True]])
def test_generate_rejects_bad_prompts(tiny, prompt):
    with pytest.raises(errors.InvalidArgument, match="prompt"):
        tiny.generate(prompt, max_tokens=1)


def test_token_ids_outside_vocabulary(tiny):
    with pytest.raises(errors.InvalidArgument, match="vocabulary"):
        tiny.generate([0, tiny.tokenizer.vocab_size], max_tokens=1)
    with pytest.raises(errors.InvalidArgument):
        tiny.logits([-1])


def test_prompt_longer_than_context_overflows(tiny):
    with pytest.raises(errors.ContextOverflow, match="context_length"):
        tiny.generate(_ids(tiny, 64), max_tokens=1)
    with pytest.raises(errors.ContextOverflow):
        tiny.logits(_ids(tiny, 65))


def test_generation_stops_with_length_when_the_context_is_full(tiny):
    responses = list(tiny.stream_generate(_ids(tiny, 60), max_tokens=50, temperature=1.0, seed=3))
    assert responses[-1].finish_reason in ("length", "stop")
    assert len(responses) <= 64 - 60 + 1


# ----------------------------------------------------------------------------- streaming


def test_stream_generate_responses(tiny):
    responses = list(tiny.stream_generate(_ids(tiny, 5), max_tokens=6, temperature=0.9, seed=1))
    assert 1 <= len(responses) <= 6
    for i, r in enumerate(responses, start=1):
        assert isinstance(r, metallic.GenerationResponse)
        assert r.prompt_tokens == 5 and r.generation_tokens == i
        assert r.prompt_tps > 0 and r.generation_tps > 0 and r.peak_memory > 0
        assert r.finish_reason is None or i == len(responses)
    assert responses[-1].finish_reason in ("stop", "length")
    with pytest.raises(AttributeError):  # frozen
        responses[0].text = "x"


def test_generate_joins_the_stream(tiny):
    kw = {"max_tokens": 8, "temperature": 0.8, "seed": 5}
    streamed = "".join(r.text for r in tiny.stream_generate("abc", **kw))
    assert tiny.generate("abc", **kw) == streamed


def test_seed_reproducibility_and_greedy_determinism(tiny):
    a = [r.token for r in tiny.stream_generate("hello", max_tokens=10, temperature=1.0, seed=42)]
    b = [r.token for r in tiny.stream_generate("hello", max_tokens=10, temperature=1.0, seed=42)]
    assert a == b
    g1 = tiny.generate("hello", max_tokens=10)
    g2 = tiny.generate("hello", max_tokens=10)
    assert g1 == g2


def test_greedy_first_token_is_argmax_of_logits(tiny):
    ids = _ids(tiny, 7, seed=2)
    first = next(iter(tiny.stream_generate(ids, max_tokens=1)))
    assert first.token == int(np.argmax(tiny.logits(ids)[-1]))


def test_stop_strings_are_never_emitted(tiny):
    text = tiny.generate("abc", max_tokens=24, temperature=0.0)
    if len(text) < 4:
        pytest.skip("the tiny model stopped too early to pick a stop string")
    stop = text[2:4]
    responses = list(tiny.stream_generate("abc", max_tokens=24, stop=[stop]))
    out = "".join(r.text for r in responses)
    assert stop not in out and out == text[: text.index(stop)]
    assert responses[-1].finish_reason == "stop"


def test_logits_shape_and_dtype(tiny):
    out = tiny.logits(_ids(tiny, 9))
    assert out.shape == (9, tiny.tokenizer.vocab_size) and out.dtype == np.float32
    with pytest.raises(errors.InvalidArgument):
        tiny.logits("a string")


def test_chat_renders_template(tiny):
    text = tiny.chat([{"role": "user", "content": "hi"}], max_tokens=4)
    assert isinstance(text, str)
    with pytest.raises(errors.InvalidArgument):
        tiny.chat([{"role": "user"}], max_tokens=4)


# ----------------------------------------------------------------------------- lifecycle


def test_second_concurrent_generation_is_busy(tiny):
    stream = tiny.stream_generate("hello", max_tokens=4)
    next(stream)  # holds the model
    with pytest.raises(errors.Busy):
        tiny.generate("again", max_tokens=1)
    stream.close()
    assert tiny.generate("again", max_tokens=1) is not None  # released


def test_threads_get_busy_or_correct_output(tiny):
    want = tiny.generate("hello", max_tokens=8)
    results, failures = [], []

    def worker():
        try:
            results.append(tiny.generate("hello", max_tokens=8))
        except errors.Busy:
            failures.append("busy")

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) + len(failures) == 4
    assert all(r == want for r in results)  # never corrupted output


def test_closed_model_raises_closed(tmp_path):
    m = tiny_models.make_model(tmp_path, "qwen2", "f16", "hf", tied=False)
    model = metallic.load(m.path, context_length=32)
    model.close()
    model.close()  # idempotent
    assert model.closed
    with pytest.raises(errors.Closed):
        model.generate("hi", max_tokens=1)
    with pytest.raises(errors.Closed):
        model.logits([1, 2])


def test_context_manager_closes(tmp_path):
    m = tiny_models.make_model(tmp_path, "llama", "q4_0", "gguf")
    with metallic.load(m.path, context_length=32) as model:
        assert model.generate([5, 6, 7], max_tokens=2) is not None
    assert model.closed


# ----------------------------------------------------------------------------- the real model


def test_smollm2_chat_and_stream(smollm2):
    assert smollm2.arch == "llama" and smollm2.device == "cpu"
    text = smollm2.chat([{"role": "user", "content": "What is 2+2?"}], max_tokens=16)
    assert "4" in text
    last = list(smollm2.stream_generate("The capital of France is", max_tokens=3))[-1]
    assert last.prompt_tokens == 5 and last.finish_reason == "length"
