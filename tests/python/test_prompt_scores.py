"""Prompt scoring (src/metallic/prompt_scores.py, the Scheduler's ``prompt_logprobs``).

References: the log-softmax in Python floats (math.fsum over exact float64 exponentials) for
``score_rows``; for the model, ``Model.logits`` (the single-sequence forward of every position,
itself tested against NumPy, HF transformers and llama.cpp) with a float64 log-softmax. The
scheduler's rows come from the batched forward, which is batch invariant, and its exponentials
are float32 summed in float64: 1e-5 absolute covers the float32 rounding of ``x - max`` and of
``exp`` (each ~6e-8 relative) over vocabularies of 1e5 ids with a wide margin; the measured gap
is about 2e-8 (SmolLM2, 146 positions).
"""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metallic import batch as batch_mod
from metallic import errors
from metallic.prompt_scores import (
    PromptLogprobs,
    PromptScorer,
    _top_ids,
    check_prompt_logprobs,
    score_rows,
)
from metallic.sampling import MAX_TOP_LOGPROBS as MAX_TOP

pytest.importorskip("tiny_models")
import test_batch  # noqa: E402

TOL = 1e-5  # see the module docstring


def _log_softmax_py(row) -> list[float]:
    m = max(float(x) for x in row)
    lse = m + math.log(math.fsum(math.exp(float(x) - m) for x in row))
    return [float(x) - lse for x in row]


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 5),
    st.integers(2, 300),
    st.integers(0, 8),
    st.integers(0, 2**32 - 1),
    st.sampled_from([1.0, 30.0, 1e4]),
)
def test_score_rows_against_python_log_softmax(n, vocab, k, seed, scale):
    rng = np.random.default_rng(seed)
    rows = (rng.standard_normal((n, vocab)) * scale).astype(np.float32)
    if vocab > 3:  # ties: the lower id comes first among equal logits, at the k-th place too
        rows[:, 1] = rows[:, 2]
        rows[:, vocab - 1] = rows[:, 0]
    if seed % 3 == 0:  # few distinct values: ties everywhere
        rows = np.round(rows / scale).astype(np.float32)
    nxt = rng.integers(0, vocab, n)
    chosen, tops = score_rows(rows, nxt, k)
    for i in range(n):
        ref = _log_softmax_py(rows[i])
        assert abs(chosen[i] - ref[nxt[i]]) <= TOL * max(1.0, abs(ref[nxt[i]]) * 1e-3)
        if k == 0:
            assert tops is None
            continue
        order = sorted(range(vocab), key=lambda t: (-float(rows[i, t]), t))[: min(k, vocab)]
        assert [t for t, _ in tops[i]] == order
        for t, lp in tops[i]:
            assert abs(lp - ref[t]) <= TOL * max(1.0, abs(ref[t]) * 1e-3)


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 4),
    st.integers(1, 3000),
    st.integers(1, 40),
    st.integers(0, 2**32 - 1),
    st.sampled_from([0.5, 3.0, 1e3]),
)
def test_top_ids_equal_a_full_sort(n, vocab, k, seed, scale):
    """The block-maxima prefilter of _top_ids against sorting every id (ties: lower id)."""
    rng = np.random.default_rng(seed)
    rows = np.round(rng.standard_normal((n, vocab)) * scale).astype(np.float32)  # many ties
    if seed % 4 == 0:
        rows[:, rng.integers(0, vocab, vocab // 3)] = -np.inf
    for i, ids in enumerate(_top_ids(rows, k)):
        want = sorted(range(vocab), key=lambda t: (-float(rows[i, t]), t))[: min(k, vocab)]
        assert ids.tolist() == want


def test_score_rows_keeps_minus_inf_finite_elsewhere():
    rows = np.array([[0.0, -np.inf, 1.0]], np.float32)
    chosen, tops = score_rows(rows, [1], 2)
    assert chosen[0] == -math.inf
    assert [t for t, _ in tops[0]] == [2, 0]


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.lists(st.integers(1, 9), min_size=1, max_size=8), st.integers(0, 3))
def test_scorer_chunks_equal_one_pass(n_ids, chunks, k):
    rng = np.random.default_rng(n_ids * 31 + k)
    ids = [int(t) for t in rng.integers(0, 50, n_ids)]
    rows = rng.standard_normal((n_ids, 50)).astype(np.float32)
    whole = PromptScorer(ids, k)
    whole.add(rows, 0)
    parts, pos, c = PromptScorer(ids, k), 0, 0
    while pos < n_ids:
        step = min(chunks[c % len(chunks)], n_ids - pos)
        parts.add(rows[pos : pos + step], pos)
        pos, c = pos + step, c + 1
    a, b = whole.result(None), parts.result("length")
    assert a.logprobs == b.logprobs and a.top_logprobs == b.top_logprobs
    assert a.logprobs[0] is None and len(a.logprobs) == n_ids == a.prompt_tokens
    assert (a.top_logprobs is None) == (k == 0)
    assert b.finish_reason == "length" and a.finish_reason is None


def test_scorer_refuses_an_unfinished_prompt():
    s = PromptScorer([1, 2, 3], 0)
    s.add(np.zeros((1, 4), np.float32), 0)
    with pytest.raises(errors.InvalidArgument, match="prompt scores: expected 3, got 2"):
        s.result(None)


@pytest.mark.parametrize("bad", [-1, MAX_TOP + 1, True, 1.0, "2"])
def test_check_prompt_logprobs(bad):
    assert check_prompt_logprobs(None) == -1 and check_prompt_logprobs(MAX_TOP) == MAX_TOP
    with pytest.raises(errors.InvalidArgument, match="prompt_logprobs"):
        check_prompt_logprobs(bad)


# ---------------------------------------------------------------------------- on the model
tiny, ring = test_batch.tiny, test_batch.ring  # its fixtures: a llama and a gemma3 with rings
_ids = test_batch._ids


def reference_log_softmax(model, ids) -> tuple[np.ndarray, np.ndarray]:
    """Model.logits of ids in float64 and their log-softmax (the references of the scores)."""
    logits = model.logits(ids).astype(np.float64)
    m = logits.max(axis=1, keepdims=True)
    return logits, logits - (m + np.log(np.exp(logits - m).sum(axis=1, keepdims=True)))


def _reference(model, ids, k):
    logits, lsm = reference_log_softmax(model, ids)
    chosen = [None] + [lsm[i, ids[i + 1]] for i in range(len(ids) - 1)]
    tops = [None] + [list(np.argsort(-logits[i], kind="stable")[:k]) for i in range(len(ids) - 1)]
    return chosen, tops


def _check(model, p: PromptLogprobs, ids, k):
    ref, ref_tops = _reference(model, ids, k)
    assert list(p.tokens) == ids and p.prompt_tokens == len(ids)
    assert p.logprobs[0] is None
    for a, b in zip(p.logprobs[1:], ref[1:], strict=True):
        assert abs(a - b) <= TOL
    if k == 0:
        assert p.top_logprobs is None
    else:
        assert p.top_logprobs[0] is None
        for got, want in zip(p.top_logprobs[1:], ref_tops[1:], strict=True):
            assert [t for t, _ in got] == [int(t) for t in want]


@pytest.mark.parametrize("fixture", ["tiny", "ring"])
@pytest.mark.parametrize("score_rows_per_step", [32, 5])
def test_batch_scores_equal_model_logits(request, monkeypatch, fixture, score_rows_per_step):
    """Prompts longer than a step's budget and than the rows scored per step, with other
    requests generating in the same steps."""
    model = request.getfixturevalue(fixture)
    monkeypatch.setattr(batch_mod, "_SCORE_ROWS", score_rows_per_step)
    lengths = [1, 2, 17, 40] if fixture == "tiny" else [3, 30, 50]
    prompts = [_ids(model, n, seed) for seed, n in enumerate(lengths)]
    res = model.batch_generate(prompts, max_tokens=0, prompt_logprobs=2)
    assert res.texts == [""] * len(prompts) and res.responses == [None] * len(prompts)
    assert res.errors == [None] * len(prompts)
    for ids, p in zip(prompts, res.prompt_logprobs, strict=True):
        assert p.finish_reason == "length"
        _check(model, p, ids, 2)


def test_scoring_leaves_other_requests_unchanged(tiny, monkeypatch):
    monkeypatch.setattr(batch_mod, "_SCORE_ROWS", 3)
    plain = [_ids(tiny, 9, 40 + i) for i in range(3)]
    scored = _ids(tiny, 30, 50)
    alone = tiny.batch_generate(plain, max_tokens=12)
    mixed = tiny.batch_generate([scored, *plain], max_tokens=12, prompt_logprobs=0)
    assert mixed.texts[1:] == alone.texts
    _check(tiny, mixed.prompt_logprobs[0], scored, 0)
    assert mixed.responses[0].generation_tokens == 12


def test_scored_output_matches_its_generated_logprobs(tiny):
    """The greedy output's logprobs, scored again as a prompt: the same log-probabilities."""
    ids = _ids(tiny, 11, 7)
    out = []
    sched = tiny.scheduler()
    sched.submit(tiny._request(ids, max_tokens=10, logprobs=True, prompt_logprobs=0), out.append)
    sched.run_until_idle()
    assert isinstance(out[0], PromptLogprobs) and out[0].finish_reason is None
    gen = out[1:]
    assert len(gen) == 10 and gen[-1].finish_reason == "length"
    again = tiny.batch_generate([ids + [r.token for r in gen]], max_tokens=0, prompt_logprobs=0)
    scores = again.prompt_logprobs[0].logprobs[len(ids) :]
    for r, lp in zip(gen, scores, strict=True):
        assert abs(r.logprob - lp) <= TOL


def test_max_tokens_zero_needs_prompt_logprobs(tiny):
    with pytest.raises(errors.InvalidArgument, match="max_tokens"):
        tiny.batch_generate(["hi"], max_tokens=0)
    with pytest.raises(errors.InvalidArgument, match="prompt_logprobs"):
        tiny.batch_generate(["hi"], max_tokens=0, prompt_logprobs=-1)
    with pytest.raises(TypeError):
        tiny.stream_generate("hi", prompt_logprobs=0)


def test_cancel_while_scoring(tiny, monkeypatch):
    monkeypatch.setattr(batch_mod, "_SCORE_ROWS", 2)
    events = []
    sched = tiny.scheduler()
    h = sched.submit(
        tiny._request(_ids(tiny, 40, 3), max_tokens=0, prompt_logprobs=0), events.append
    )
    sched.step()
    sched.step()
    h.cancel()
    sched.run_until_idle()
    assert len(events) == 1 and isinstance(events[0], errors.Cancelled)
    assert sched.running == 0 and sched.kv_cells()[0] == 0


def test_a_raising_callback_cancels_its_request_only(tiny, caplog):
    """A bug in one consumer's on_event: that request is cancelled (and logged); the others of
    the same steps finish, and the background thread goes on serving."""
    done = threading.Event()
    got, bad_calls = [], []

    def bad(ev):
        bad_calls.append(ev)
        raise RuntimeError("consumer bug")

    def good(ev):
        got.append(ev)
        if isinstance(ev, BaseException) or ev.finish_reason is not None:
            done.set()

    sched = tiny.scheduler()
    sched.start()
    try:
        sched.submit(tiny._request(_ids(tiny, 5, 1), max_tokens=20), bad)
        sched.submit(tiny._request(_ids(tiny, 5, 2), max_tokens=12), good)
        assert done.wait(60) and sched.alive
        assert len(got) == 12 and got[-1].finish_reason == "length"
        assert isinstance(bad_calls[-1], errors.Cancelled) and len(bad_calls) == 2
        assert "on_event raised" in caplog.text
        done.clear()
        got.clear()
        sched.submit(tiny._request(_ids(tiny, 5, 3), max_tokens=3), good)
        assert done.wait(60) and len(got) == 3
    finally:
        sched.stop()
    assert sched.running == 0 and sched.kv_cells()[0] == 0


def test_a_failing_step_ends_its_requests_not_the_thread(tiny, monkeypatch, caplog):
    """A bug inside a step (here the planner): the running and waiting requests end with the
    error, logged; the next requests are served."""
    got, done = [], threading.Event()

    def sink(ev):
        got.append(ev)
        if isinstance(ev, BaseException) or ev.finish_reason is not None:
            done.set()

    sched = tiny.scheduler()
    real = sched._plan
    calls = []

    def plan():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("planner bug")
        return real()

    monkeypatch.setattr(sched, "_plan", plan)
    sched.start()
    try:
        sched.submit(tiny._request(_ids(tiny, 5, 1), max_tokens=10), sink)
        assert done.wait(60) and isinstance(got[-1], RuntimeError) and sched.alive
        assert "a step failed" in caplog.text
        done.clear()
        got.clear()
        sched.submit(tiny._request(_ids(tiny, 5, 2), max_tokens=3), sink)
        assert done.wait(60) and got[-1].finish_reason == "length"
    finally:
        sched.stop()
    assert sched.running == 0 and sched.kv_cells()[0] == 0
