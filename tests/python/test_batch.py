"""Continuous batching in Python (src/metallic/batch.py): Model.batch_generate and Scheduler.

The reference is the single-sequence path (``stream_generate``), itself tested against the NumPy
reference and llama.cpp: a batched request must give the same responses token for token (greedy
and seeded sampling, penalties, stop strings, log-probabilities, constraints), because the
kernels are batch invariant and every request samples with its own native Sampler. Timing fields
differ and are not compared.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import metallic
from metallic import errors
from metallic.batch import QueueFull, Request, Scheduler
from metallic.sampling import SamplingParams

tiny_models = pytest.importorskip("tiny_models")
tiny_families = pytest.importorskip("tiny_families")

_SAME = ("text", "token", "prompt_tokens", "generation_tokens", "finish_reason")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    m = tiny_models.make_model(tmp_path_factory.mktemp("batch"), "llama", "q8_0", "gguf")
    with metallic.load(
        m.path, device="cpu", threads=2, context_length=96, parallel=4, batch_size=16
    ) as model:
        yield model


@pytest.fixture(scope="module")
def ring(tmp_path_factory):  # gemma3: sliding-window rings per slot
    m = tiny_models.make_model(
        tmp_path_factory.mktemp("batch_ring"),
        "gemma3",
        "f32",
        "gguf",
        tiny_families.USUAL_TIED["gemma3"],
    )
    with metallic.load(
        m.path, device="cpu", threads=2, context_length=64, parallel=3, batch_size=8
    ) as model:
        yield model


def _ids(model, n, seed):
    rng = np.random.default_rng(seed)
    return [int(t) for t in rng.integers(3, model.tokenizer.vocab_size, n)]


def _alone(model, prompt, **kw):
    model.reset_cache()
    return list(model.stream_generate(prompt, **kw))


def _batched(model, prompts, kws):
    """Every prompt with its own arguments through one Scheduler: {i: [responses]}."""
    out = {i: [] for i in range(len(prompts))}
    sched = Scheduler(model)
    for i, (p, kw) in enumerate(zip(prompts, kws, strict=True)):
        req = model._request(p, **kw)
        sched.submit(req, lambda ev, i=i: out[i].append(ev))
    with model._lock:
        sched.run_until_idle()
    return out


def _same(a, b, fields=_SAME):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for f in fields:
            assert getattr(x, f) == getattr(y, f), f


def test_batch_generate_greedy_equals_generate(tiny):
    prompts = [_ids(tiny, n, seed=n) for n in (5, 17, 1, 40, 9, 23)]  # 6 requests, 4 slots
    want = [tiny.generate(p, max_tokens=12) for p in prompts]
    got = tiny.batch_generate(prompts, max_tokens=12)
    assert got.texts == want
    assert all(e is None for e in got.errors)
    assert [r.generation_tokens for r in got.responses] == [12] * 6
    assert got.generation_tps > 0


def test_every_sampling_option_per_request(tiny):
    """Different parameters side by side in one batch: each request equals its own
    stream_generate (seeded temperature draws, top-k/p, min-p, penalties, logit bias,
    min_tokens, stop strings, log-probabilities)."""
    base = {"max_tokens": 10}
    kws = [
        {**base, "temperature": 0.8, "seed": 1},
        {**base, "temperature": 1.2, "top_k": 5, "seed": 2},
        {**base, "temperature": 0.9, "top_p": 0.7, "min_p": 0.05, "seed": 3},
        {**base, "repetition_penalty": 1.3, "presence_penalty": 0.5, "frequency_penalty": 0.4},
        {**base, "logit_bias": {7: 50.0}, "min_tokens": 3},
        {**base, "logprobs": True, "top_logprobs": 3, "temperature": 0.7, "seed": 9},
    ]
    prompts = [_ids(tiny, 6 + i, seed=100 + i) for i in range(len(kws))]
    got = _batched(tiny, prompts, kws)
    for i, kw in enumerate(kws):
        want = _alone(tiny, prompts[i], **kw)
        _same(got[i], want, _SAME + ("logprob", "top_logprobs"))


def test_stop_strings_in_a_batch(tiny):
    prompt = _ids(tiny, 8, seed=5)
    full = tiny.generate(prompt, max_tokens=16)
    stop = full[3:6] if len(full) > 6 else None
    if not stop:
        pytest.skip("the tiny model's output is too short to cut")
    kws = [{"max_tokens": 16, "stop": stop}, {"max_tokens": 16}]
    got = _batched(tiny, [prompt, prompt], kws)
    _same(got[0], _alone(tiny, prompt, **kws[0]))
    assert got[0][-1].finish_reason == "stop"
    assert "".join(r.text for r in got[1]) == full


@pytest.mark.parametrize("n_prompts", [1, 3, 7])
def test_rings_per_slot(ring, n_prompts):
    """Sliding-window rings wrap in every slot (prompts of 3x the window, chunked by the 8-token
    budget beside other slots' decode tokens)."""
    prompts = [_ids(ring, 24 + 3 * i, seed=i) for i in range(n_prompts)]
    want = [ring.generate(p, max_tokens=10) for p in prompts]
    assert ring.batch_generate(prompts, max_tokens=10).texts == want


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    lengths=st.lists(st.integers(1, 50), min_size=1, max_size=7),
    max_tokens=st.lists(st.integers(1, 20), min_size=1, max_size=7),
)
def test_any_mix_of_requests_matches_sequential(tiny, lengths, max_tokens):
    prompts = [_ids(tiny, n, seed=n * 7 + i) for i, n in enumerate(lengths)]
    mt = [max_tokens[i % len(max_tokens)] for i in range(len(prompts))]
    got = _batched(tiny, prompts, [{"max_tokens": m} for m in mt])
    for i, p in enumerate(prompts):
        _same(got[i], _alone(tiny, p, max_tokens=mt[i]))


def test_prefix_reuse_across_requests(tiny):
    """A request sharing a prefix with what a slot holds starts after it (cached_tokens), from
    its own slot or a copy of another's; the answer is the same as computed from scratch."""
    system = _ids(tiny, 30, seed=42)
    a = system + _ids(tiny, 5, seed=1)
    b = system + _ids(tiny, 7, seed=2)
    tiny.reset_cache()  # slot 0 is the model's cache: an earlier test may have left a prefix of a
    sched = Scheduler(tiny)
    first, second = [], []
    sched.submit(tiny._request(a, max_tokens=4), first.append)
    with tiny._lock:
        sched.run_until_idle()
        sched.submit(tiny._request(b, max_tokens=4), second.append)
        sched.run_until_idle()
    assert first[0].cached_tokens == 0
    assert second[0].cached_tokens == 30
    _same(second, _alone(tiny, b, max_tokens=4))


def test_n_choices_compute_the_shared_prompt_once(tiny):
    """Requests with one long prompt submitted together: the first computes it, the others wait
    one prefill and copy its rows (cached_tokens = prompt - 1)."""
    prompt = _ids(tiny, 60, seed=9)
    out = _batched(
        tiny, [prompt] * 3, [{"max_tokens": 3, "temperature": 0.9, "seed": s} for s in (1, 2, 3)]
    )
    assert sorted(out[i][0].cached_tokens for i in range(3)) == [0, 59, 59]
    for i, s in enumerate((1, 2, 3)):
        _same(out[i], _alone(tiny, prompt, max_tokens=3, temperature=0.9, seed=s))


def test_cancel_frees_the_slot(tiny):
    sched = Scheduler(tiny)
    events = []
    h = sched.submit(tiny._request(_ids(tiny, 10, seed=1), max_tokens=50), events.append)
    other = []
    sched.submit(tiny._request(_ids(tiny, 10, seed=2), max_tokens=5), other.append)
    with tiny._lock:
        sched.step()
        sched.step()
        h.cancel()
        sched.run_until_idle()
    assert isinstance(events[-1], errors.Cancelled)
    assert other[-1].finish_reason == "length"
    assert sched.running == 0 and sched.waiting == 0
    assert len(sched._free) == sched.n_slots


def test_cancel_while_waiting(tiny):
    sched = Scheduler(tiny)
    events = []
    h = sched.submit(tiny._request(_ids(tiny, 4, seed=1), max_tokens=5), events.append)
    h.cancel()
    with tiny._lock:
        sched.run_until_idle()
    assert len(events) == 1 and isinstance(events[0], errors.Cancelled)


def test_queue_full(tiny):
    sched = Scheduler(tiny, max_queue=2)
    req = tiny._request(_ids(tiny, 4, seed=1), max_tokens=2)
    sched.submit(req, lambda ev: None)
    sched.submit(req, lambda ev: None)
    with pytest.raises(QueueFull, match="queue") as info:
        sched.submit(req, lambda ev: None)
    assert isinstance(info.value, errors.Busy)


def test_background_thread_and_drain(tiny):
    tiny.reset_cache()
    sched = tiny.scheduler()
    done = threading.Event()
    got = []

    def on_event(ev):
        got.append(ev)
        if isinstance(ev, BaseException) or ev.finish_reason:
            done.set()

    sched.start()
    try:
        with pytest.raises(errors.Busy):  # the scheduler owns the model while it runs
            tiny.generate("x", max_tokens=1)
        sched.submit(tiny._request(_ids(tiny, 5, seed=3), max_tokens=6), on_event)
        assert done.wait(30)
    finally:
        sched.stop()
    with pytest.raises(errors.Busy, match="shutting down"):
        sched.submit(tiny._request(_ids(tiny, 5, seed=3), max_tokens=1), on_event)
    _same(got, _alone(tiny, _ids(tiny, 5, seed=3), max_tokens=6))


def test_on_step_follows_every_step_and_its_events(tiny):
    """The server's relay hook: called once after each step, the step's events already out."""
    tiny.reset_cache()
    sched = tiny.scheduler()
    log = []
    sched.on_step = lambda: log.append("step")
    sched.submit(tiny._request(_ids(tiny, 5, seed=4), max_tokens=3), lambda ev: log.append("ev"))
    sched.run_until_idle()
    assert log == ["ev", "step"] * 3 + ["step"]  # the last: the step that found nothing to do


def test_per_request_errors_do_not_stop_the_batch(tiny):
    """A constraint that leaves no token ends its own request with a typed error."""
    good = _ids(tiny, 6, seed=1)
    sched = Scheduler(tiny)
    a, b = [], []
    req_bad = tiny._request(good, max_tokens=4)
    req_bad.params = SamplingParams(min_tokens=5)

    class NoToken:
        def start(self, sampler):
            sampler.mask[:] = 0
            sampler.mask_enabled = True

        def advance(self, token):
            return False

    req_bad.constraint = NoToken()
    sched.submit(req_bad, a.append)
    sched.submit(tiny._request(good, max_tokens=4), b.append)
    with tiny._lock:
        sched.run_until_idle()
    assert isinstance(a[-1], errors.InvalidArgument)
    assert b[-1].finish_reason == "length"


def test_batch_generate_validates_up_front(tiny):
    with pytest.raises(errors.InvalidArgument, match="prompts"):
        tiny.batch_generate("one string")
    with pytest.raises(errors.InvalidArgument, match="prompts"):
        tiny.batch_generate([])
    with pytest.raises(errors.InvalidArgument, match="max_tokens"):
        tiny.batch_generate([[1, 2]], max_tokens=0)
    with pytest.raises(errors.InvalidArgument, match="logit_bias"):
        tiny.batch_generate([[1, 2]], logit_bias={10**6: 1.0})
    with pytest.raises(errors.ContextOverflow):
        tiny.batch_generate([[1] * 200])


def test_request_is_a_plain_dataclass():
    r = Request([1, 2], 3, SamplingParams())
    assert r.stops == () and r.top_logprobs == -1 and r.constraint is None


@pytest.mark.slow
def test_smollm2_eight_prompts_equal_sequential(smollm2_path):
    prompts = [
        "The capital of France is",
        "def fibonacci(n):",
        "Once upon a time",
        "1, 2, 3, 4,",
        "The best way to learn a language is",
        "Water boils at",
        "In 1492,",
        "My favourite colour is",
    ]
    with metallic.load(smollm2_path, threads=2, parallel=8, context_length=512) as m:
        want = [m.generate(p, max_tokens=24) for p in prompts]
        assert m.batch_generate(prompts, max_tokens=24).texts == want
