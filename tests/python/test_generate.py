"""The generation loop (src/metallic/generate.py): KV reuse across calls, cached_tokens, stop
strings across token boundaries, EOS and finish_reason, streaming text.

KV reuse is checked for exact (bitwise) equality: the engine computes every row of a batch
independently of the other rows (per-row activation quantization, per-row matmul and attention
over the cached rows), so computing positions p.. after a cached prefix gives the same floats as
computing them inside one long batch. Any difference is a reuse bug, not rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import metallic
from metallic import errors
from metallic.generate import TextStream, _StopMatcher, common_prefix

tiny_models = pytest.importorskip("tiny_models")
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    m = tiny_models.make_model(tmp_path_factory.mktemp("gen"), "llama", "q8_0", "gguf")
    with metallic.load(m.path, device="cpu", threads=2, context_length=96) as model:
        yield model


def _ids(model, n, seed=0):
    rng = np.random.default_rng(seed)
    return [int(t) for t in rng.integers(3, model.tokenizer.vocab_size, n)]


def _last_logits(model):
    return np.array(model._engine.last_logits())


# ----------------------------------------------------------------------------- KV reuse


def test_second_call_reuses_the_shared_prefix(tiny):
    tiny.reset_cache()
    prompt = _ids(tiny, 20, seed=1)
    first = list(tiny.stream_generate(prompt, max_tokens=5))
    assert first[-1].cached_tokens == 0
    # The cache now holds the prompt and every generated token but the last one.
    generated = [r.token for r in first]
    assert tiny.cached_tokens == tuple(prompt + generated[:-1])
    follow = prompt + generated + _ids(tiny, 6, seed=2)
    second = list(tiny.stream_generate(follow, max_tokens=3))
    assert second[0].cached_tokens == len(prompt) + len(generated) - 1
    assert all(r.cached_tokens == second[0].cached_tokens for r in second)


def test_reused_logits_equal_fresh_logits(tiny):
    prompt = _ids(tiny, 30, seed=3)
    fresh = tiny.logits(prompt)  # also leaves the cache holding `prompt`
    for p in (1, 7, 8, 29):  # odd, tile-sized and almost-everything prefixes
        tiny.reset_cache()
        list(tiny.stream_generate(prompt[:p] + [prompt[p]], max_tokens=1))
        got = list(tiny.stream_generate(prompt, max_tokens=1))
        assert got[0].cached_tokens == min(p + 1, len(prompt) - 1)
        np.testing.assert_array_equal(_last_logits(tiny), fresh[-1])
    # Greedy continuations agree token for token with and without reuse.
    tiny.reset_cache()
    want = [r.token for r in tiny.stream_generate(prompt, max_tokens=8)]
    got = [r.token for r in tiny.stream_generate(prompt, max_tokens=8)]
    assert got == want


def test_identical_prompt_recomputes_only_the_last_token(tiny):
    prompt = _ids(tiny, 12, seed=4)
    tiny.reset_cache()
    a = list(tiny.stream_generate(prompt, max_tokens=2))
    b = list(tiny.stream_generate(prompt, max_tokens=2))
    assert b[0].cached_tokens == len(prompt) - 1  # the last one is recomputed for its logits
    assert [r.token for r in a] == [r.token for r in b]


def test_diverging_prompt_reuses_only_the_common_part(tiny):
    tiny.reset_cache()
    a, b = _ids(tiny, 16, seed=5), _ids(tiny, 16, seed=6)
    b[:9] = a[:9]
    b[9] = (a[9] + 1) % tiny.tokenizer.vocab_size
    list(tiny.stream_generate(a, max_tokens=1))
    assert next(iter(tiny.stream_generate(b, max_tokens=1))).cached_tokens == 9
    fresh = tiny.logits(b)
    tiny.reset_cache()
    list(tiny.stream_generate(a, max_tokens=1))
    list(tiny.stream_generate(b, max_tokens=1))
    np.testing.assert_array_equal(_last_logits(tiny), fresh[-1])


def test_logits_is_a_fresh_context_and_leaves_its_tokens_cached(tiny):
    ids = _ids(tiny, 10, seed=7)
    list(tiny.stream_generate(_ids(tiny, 10, seed=8), max_tokens=3))
    out = tiny.logits(ids)
    assert tiny.cached_tokens == tuple(ids)
    assert next(iter(tiny.stream_generate(ids, max_tokens=1))).cached_tokens == 9
    np.testing.assert_array_equal(_last_logits(tiny), out[-1])


def test_failed_call_keeps_the_cache_consistent(tiny):
    prompt = _ids(tiny, 10, seed=9)
    tiny.reset_cache()
    list(tiny.stream_generate(prompt, max_tokens=2))
    with pytest.raises(errors.ContextOverflow):
        tiny.generate(_ids(tiny, 96, seed=10), max_tokens=1)
    assert tiny.cached_tokens[: len(prompt)] == tuple(prompt)
    stream = tiny.stream_generate(prompt + [5, 6], max_tokens=5)
    next(stream)
    stream.close()  # abandoned mid-way: what was computed stays valid
    fresh = tiny.logits(prompt + [5, 6])[-1]
    tiny.reset_cache()
    list(tiny.stream_generate(prompt + [5], max_tokens=1))
    list(tiny.stream_generate(prompt + [5, 6], max_tokens=1))
    np.testing.assert_array_equal(_last_logits(tiny), fresh)


def test_smollm2_multi_turn_chat_reuses_earlier_turns(smollm2):
    smollm2.reset_cache()
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    first = list(smollm2.stream_chat(messages, max_tokens=12))
    messages += [
        {"role": "assistant", "content": "".join(r.text for r in first)},
        {"role": "user", "content": "And of Italy?"},
    ]
    second = list(smollm2.stream_chat(messages, max_tokens=12))
    assert second[0].cached_tokens >= first[0].prompt_tokens
    assert second[0].prompt_tokens - second[0].cached_tokens < first[0].prompt_tokens


@pytest.mark.parametrize("a, b, n", [([], [1], 0), ([1, 2, 3], [1, 2, 4], 2), ([1], [1], 1)])
def test_common_prefix(a, b, n):
    assert common_prefix(a, b) == n


# ----------------------------------------------------------------------------- stop / EOS


def test_eos_finishes_with_stop_and_is_not_emitted(tiny):
    eos = min(tiny.tokenizer.eos_ids)
    # A huge bias makes EOS the greedy choice after min_tokens tokens.
    rs = list(tiny.stream_generate("abc", max_tokens=10, logit_bias={eos: 100.0}, min_tokens=3))
    assert [r.token for r in rs][-1] == eos and len(rs) == 4
    assert rs[-1].finish_reason == "stop" and rs[-1].text == ""
    assert all(r.finish_reason is None for r in rs[:-1])


def test_length_finish(tiny):
    rs = list(tiny.stream_generate("abc", max_tokens=3, logit_bias={2: -100.0}))
    assert len(rs) == 3 and rs[-1].finish_reason == "length"


@FAST
@given(
    text=st.text(alphabet="abcxy", max_size=40),
    stops=st.lists(st.text(alphabet="abcxy", min_size=1, max_size=4), min_size=1, max_size=3),
    cuts=st.lists(st.integers(0, 40), max_size=12),
)
def test_stop_matcher_spans_chunks(text, stops, cuts):
    """However the text is split into chunks, the output is the text up to the first stop."""
    bounds = sorted({0, len(text), *[c for c in cuts if c <= len(text)]})
    chunks = [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    m = _StopMatcher(tuple(stops))
    out, stopped = "", False
    for c in chunks:
        piece, stopped = m.push(c)
        out += piece
        if stopped:
            break
    if not stopped:
        rest, stopped = m.flush()
        out += rest
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    assert out == (text[: min(hits)] if hits else text)
    assert stopped == bool(hits)


@pytest.fixture(scope="module")
def smol_tok(smollm2):
    return smollm2.tokenizer


@FAST
@given(data=st.data())
def test_text_stream_random_tokens_never_split_characters(smol_tok, data):
    """Random ids (many are partial UTF-8 byte tokens): the streamed pieces join to the
    tokenizer's one-shot decode, and a stop string cuts exactly at its first occurrence."""
    ids = data.draw(st.lists(st.integers(0, smol_tok.vocab_size - 1), min_size=1, max_size=24))
    full = smol_tok.decode(ids)
    ts = TextStream(smol_tok, ())
    pieces = [ts.add(t)[0] for t in ids] + [ts.finish()[0]]
    assert "".join(pieces) == full
    if len(full) >= 3:
        i = data.draw(st.integers(0, len(full) - 2))
        stop = full[i : i + 2]
        ts = TextStream(smol_tok, (stop,))
        out = ""
        for t in ids:
            piece, hit = ts.add(t)
            out += piece
            if hit:
                break
        else:
            piece, hit = ts.finish()
            out += piece
        assert hit and out == full[: full.index(stop)]


def test_reset_cache_during_a_generation_is_busy(tiny):
    stream = tiny.stream_generate([5, 6, 7], max_tokens=4)
    next(stream)
    with pytest.raises(errors.Busy, match=r"^\[reset_cache\]"):
        tiny.reset_cache()
    stream.close()
    tiny.reset_cache()
    assert tiny.cached_tokens == ()


def test_padded_vocabulary_ids_decode_to_nothing(smol_tok):
    """HF checkpoints pad the embedding past the tokenizer (Qwen2.5: 151936 rows, 151665 tokens);
    a sampled padding id must not end generation with an error."""
    n = smol_tok.vocab_size
    ts = TextStream(smol_tok, (), model_vocab_size=n + 64)
    assert ts.add(smol_tok.encode("Hi")[0])[0] == "Hi"
    assert ts.add(n + 10) == ("", False)
    with pytest.raises(errors.InvalidArgument):
        TextStream(smol_tok, ()).add(n + 10)  # without the model's size the id is out of range


@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0", "q4_0", "q4_1"])
def test_a_token_s_logits_do_not_depend_on_its_batch(tmp_path, dtype):
    """Batch invariance, bit for bit: 13 tokens in one pass (an 8-token tile, a 4-token pass and
    a single token on the row-major kernels; the interleaved ones where the CPU has VNNI) equal
    the same tokens decoded one at a time. Prefix reuse, chunked prompts and speculative
    verification depend on it; an AVX2-only CPU once summed the three kernels in other orders."""
    m = tiny_models.make_model(tmp_path, "llama", dtype, "gguf")
    with metallic.load(m.path, device="cpu", threads=2, context_length=32) as model:
        ids = _ids(model, 13, seed=31)
        whole = model.logits(ids)
        engine = model._engine
        row = np.zeros((1, whole.shape[1]), np.float32)
        for i, t in enumerate(ids):
            engine.forward(np.array([t], np.int32), i, row, False)
            np.testing.assert_array_equal(row[0], whole[i], err_msg=f"{dtype} position {i}")
