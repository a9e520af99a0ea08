"""Speculative decoding (src/metallic/speculative.py and generate.stream's verify loop).

References:
* Plain decoding of the same model: with prompt lookup or a draft model, greedy and seeded
  outputs must be identical token for token (every emitted token is drawn by the same sampler,
  with the same random numbers, from the same logits: the verify pass is batch invariant).
* The target distribution, with a statistical test: a fake engine with fixed logits and a drafter
  that always proposes the second most likely token; the emitted second token's histogram over
  4000 seeds must fit the exact softmax (chi-square, alpha 1e-3). With 8 categories and 4000
  draws the test detects a total-variation error of 0.05 with power > 0.99 (noncentrality >= 40).
* PromptLookup against a brute-force search (hypothesis).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import metallic
from metallic import errors
from metallic import generate as gen
from metallic.sampling import SamplingParams, make_sampler
from metallic.spec_batch import StepCost
from metallic.speculative import PromptLookup, Speculator, check_same_vocabulary

tiny_models = pytest.importorskip("tiny_models")
core = pytest.importorskip("metallic._core")


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    d = tmp_path_factory.mktemp("spec")
    for sub in "abc":
        (d / sub).mkdir()
    return {
        "q8": tiny_models.make_model(d / "a", "llama", "q8_0", "gguf", tied=False).path,
        "f32": tiny_models.make_model(d / "b", "llama", "f32", "gguf", tied=False).path,
        "other": tiny_models.make_model(d / "c", "llama", "f32", "gguf", vocab_size=350).path,
    }


@pytest.fixture(scope="module")
def tiny(paths):
    with metallic.load(paths["q8"], device="cpu", threads=2, context_length=160) as m:
        yield m


def _repetitive(model, n, seed):
    rng = np.random.default_rng(seed)
    base = [int(t) for t in rng.integers(3, model.tokenizer.vocab_size, n)]
    return base + base + base[: n // 2]  # the continuation often repeats: drafts are accepted


def _run(model, prompt, **kw):
    model.reset_cache()
    return list(model.stream_generate(prompt, **kw))


def _same(a, b):
    assert [r.token for r in a] == [r.token for r in b]
    assert "".join(r.text for r in a) == "".join(r.text for r in b)
    assert a[-1].finish_reason == b[-1].finish_reason


@pytest.mark.parametrize("k", [1, 3, 8, 32])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_prompt_lookup_greedy_is_identical(tiny, k, seed):
    prompt = _repetitive(tiny, 12, seed)
    plain = _run(tiny, prompt, max_tokens=40)
    spec = _run(tiny, prompt, max_tokens=40, draft="prompt-lookup", num_draft_tokens=k)
    _same(spec, plain)
    assert spec[-1].draft_tokens >= spec[-1].accepted_tokens == sum(r.from_draft for r in spec)


def test_drafts_are_accepted_on_repetitive_text(tiny, monkeypatch):
    """The tiny model's greedy output falls into a cycle: prompt lookup drafts it, and most
    drafts are accepted (the policy stops drafting matches while they are rejected). The
    verify-cost timings are left out: on this tiny model Python's overhead per forward can make
    drafting not worth it, which the policy would then (rightly) decline."""
    monkeypatch.setattr(Speculator, "observe_verify", lambda self, n, seconds: None)
    prompt = _repetitive(tiny, 10, 7)
    last = _run(tiny, prompt, max_tokens=100, draft="prompt-lookup")[-1]
    assert last.accepted_tokens >= 15, (last.draft_tokens, last.accepted_tokens)
    assert last.accepted_tokens >= last.draft_tokens / 2, (last.draft_tokens, last.accepted_tokens)


@pytest.mark.parametrize(
    "kw",
    [
        {"temperature": 0.9, "seed": 4},
        {"temperature": 1.3, "top_k": 10, "top_p": 0.9, "seed": 5},
        {"repetition_penalty": 1.2, "presence_penalty": 0.3, "frequency_penalty": 0.2},
        {"logprobs": True, "top_logprobs": 3, "temperature": 0.7, "seed": 6},
        {"min_tokens": 10, "logit_bias": {5: 3.0}},
    ],
)
def test_sampling_options_are_identical(tiny, kw):
    prompt = _repetitive(tiny, 9, 11)
    plain = _run(tiny, prompt, max_tokens=50, **kw)
    spec = _run(tiny, prompt, max_tokens=50, draft="prompt-lookup", **kw)
    _same(spec, plain)
    if kw.get("logprobs"):
        assert [r.logprob for r in spec] == [r.logprob for r in plain]
        assert [r.top_logprobs for r in spec] == [r.top_logprobs for r in plain]


@pytest.mark.parametrize("max_tokens", [1, 2, 3, 17])
def test_max_tokens_stop_and_context_edges(tiny, max_tokens):
    prompt = _repetitive(tiny, 8, 3)
    kw = {"max_tokens": max_tokens, "draft": "prompt-lookup", "num_draft_tokens": 8}
    _same(_run(tiny, prompt, **kw), _run(tiny, prompt, max_tokens=max_tokens))
    full = "".join(r.text for r in _run(tiny, prompt, max_tokens=30))
    if len(full) > 8:
        stop = full[5:8]
        _same(_run(tiny, prompt, max_tokens=30, stop=stop, draft="prompt-lookup"),
              _run(tiny, prompt, max_tokens=30, stop=stop))  # fmt: skip
    long = _repetitive(tiny, 50, 5)  # 125 tokens + 40 > context 160: ends on "length"
    spec = _run(tiny, long, max_tokens=40, draft="prompt-lookup", num_draft_tokens=32)
    _same(spec, _run(tiny, long, max_tokens=40))
    assert spec[-1].finish_reason == "length"


def test_draft_model_is_identical(tiny, paths):
    """A draft model: the same weights in f32 (drafts mostly accepted), output as plain."""
    with metallic.load(paths["f32"], device="cpu", threads=1, context_length=160) as draft:
        for seed in (1, 2):
            prompt = _repetitive(tiny, 10, seed)
            spec = _run(tiny, prompt, max_tokens=30, draft=draft, num_draft_tokens=4)
            _same(spec, _run(tiny, prompt, max_tokens=30))
            assert spec[-1].accepted_tokens >= spec[-1].draft_tokens // 2
        draft.generate([1, 2, 3], max_tokens=2)  # the draft model stays usable


def test_draft_model_must_share_the_vocabulary(tiny, paths):
    other = metallic.load(paths["other"], device="cpu", threads=1, context_length=64)
    with other, pytest.raises(errors.InvalidArgument, match=r"\[generate\] draft: expected a"):
        tiny.generate([1, 2, 3], max_tokens=2, draft=other)
    with pytest.raises(errors.InvalidArgument, match="target model itself"):
        tiny.generate([1, 2, 3], max_tokens=2, draft=tiny)
    for bad in ("ngram", 3, object()):
        with pytest.raises(errors.InvalidArgument, match="draft"):
            tiny.generate([1, 2, 3], max_tokens=2, draft=bad)
    for bad in (0, 33, True, 2.5):
        with pytest.raises(errors.InvalidArgument, match="num_draft_tokens"):
            tiny.generate([1, 2, 3], max_tokens=2, draft="prompt-lookup", num_draft_tokens=bad)
    check_same_vocabulary(tiny, tiny)  # the check itself accepts a model against itself


# ----------------------------------------------------------------------------- distribution


class _FakeEngine:
    """Logits that depend only on the position: 8 allowed tokens with fixed probabilities."""

    def __init__(self, n_vocab: int):
        self.n_vocab = n_vocab
        self.context_length = 64
        rng = np.random.default_rng(0)
        self.table = np.full((self.context_length, n_vocab), -np.inf, np.float32)
        for p in range(self.context_length):
            self.table[p, 10:18] = rng.normal(0, 1, 8)

    def forward(self, tokens, start, out, all_logits):
        n = len(tokens)
        rows = self.table[start : start + n]
        out[:] = rows if all_logits else rows[-1:]

    def decode(self, token, pos, sampler):
        sampler.accept(token)
        return sampler.sample(self.table[pos])


class _SecondBest:
    """Always drafts the second most likely token of the next position (often rejected)."""

    def __init__(self, engine):
        self.e = engine
        self.n = 0

    def reset(self, ctx):
        self.n = len(ctx)

    def append(self, t):
        self.n += 1

    def draft(self, k):
        row = self.e.table[self.n - 1]  # the logits that predict the token after the context
        return [int(np.argsort(row)[-2])][:k]


def _emitted(engine, tokenizer, drafter, seed, n=2):
    sampler = make_sampler(core, engine.n_vocab, SamplingParams(temperature=1.0, seed=seed), (), -1)
    buf = np.zeros((1, engine.n_vocab), np.float32)
    spec = None if drafter is None else Speculator(drafter, 1)
    rs = gen.stream(
        engine, sampler, tokenizer, [3, 4, 5], max_tokens=n, stops=(), logits_buf=buf,
        penalty_window=0, cache=[], drafter=spec,
    )  # fmt: skip
    return [r.token for r in rs]


def test_rejection_keeps_the_target_distribution(tiny):
    e = _FakeEngine(tiny._n_vocab)
    n_draws = 4000
    second = np.zeros(e.n_vocab, np.int64)
    for seed in range(n_draws):
        spec = _emitted(e, tiny.tokenizer, _SecondBest(e), seed)
        assert spec == _emitted(e, tiny.tokenizer, None, seed)  # the same draws as plain
        second[spec[1]] += 1
    # Token 2 is sampled from the logits of position 3 (the prompt's 3 tokens, then token 1).
    p = np.exp(e.table[3, 10:18] - e.table[3, 10:18].max())
    p /= p.sum()
    observed = second[10:18]
    assert observed.sum() == n_draws
    chi2 = float((((observed - n_draws * p) ** 2) / (n_draws * p)).sum())
    assert chi2 < 24.32, chi2  # chi-square, 7 degrees of freedom, alpha = 1e-3


# ----------------------------------------------------------------------------- prompt lookup


def _brute(ctx, k, ns=(3, 2)):
    for n in ns:
        if len(ctx) < n:
            continue
        suffix = ctx[-n:]
        for start in range(len(ctx) - n - 1, -1, -1):  # most recent earlier occurrence
            if ctx[start : start + n] == suffix:
                return ctx[start + n : start + n + k]
    return []


@settings(max_examples=300, deadline=None)
@given(
    ctx=st.lists(st.integers(0, 4), min_size=0, max_size=40),
    more=st.lists(st.integers(0, 4), max_size=10),
    k=st.integers(1, 6),
)
def test_prompt_lookup_matches_brute_force(ctx, more, k):
    pl = PromptLookup()
    pl.reset(ctx)
    assert pl.draft(k) == _brute(ctx, k)
    for t in more:  # incremental: the index grows with the context
        pl.append(t)
        ctx = ctx + [t]
        assert pl.draft(k) == _brute(ctx, k)


def test_prompt_lookup_arguments():
    with pytest.raises(errors.InvalidArgument, match="n-grams"):
        PromptLookup(max_ngram=2, min_ngram=3)


# ----------------------------------------------------------------------------- batched


@pytest.fixture
def prior_draft_price(monkeypatch):
    """A draft's price in a batched step comes from the measured step times (StepCost.rho);
    pinned to its prior, what is drafted no longer depends on this machine's timing (an ASan
    build on a busy machine fitted a price that left 5 accepted drafts). Outputs are the same
    whatever the price: the tests below check that, and that drafts are made and accepted."""
    monkeypatch.setattr(StepCost, "rho", lambda self, t0: self.prior)


def test_batched_drafts_are_identical(paths, prior_draft_price):
    """Prompt lookup inside continuous batching: drafts of several requests verified in one
    ragged step (each segment's rows through forward_batch's logits_out), same outputs."""
    with metallic.load(
        paths["q8"], device="cpu", threads=2, context_length=160, parallel=3, batch_size=24
    ) as m:
        prompts = [_repetitive(m, 8 + i, 20 + i) for i in range(5)]
        kws = [{"max_tokens": 40}, {"max_tokens": 40, "temperature": 0.8, "seed": 3}]
        for kw in kws:
            want = []
            for p in prompts:
                m.reset_cache()
                want.append([r.token for r in m.stream_generate(p, **kw)])
            got = m.batch_generate(prompts, draft="prompt-lookup", num_draft_tokens=5, **kw)
            for i, p in enumerate(prompts):
                m.reset_cache()
                assert got.texts[i] == m.generate(p, **kw)
            if "temperature" not in kw:  # greedy: the tiny model's cycles are drafted
                assert sum(r.accepted_tokens for r in got.responses) > 10
            assert all(
                r.generation_tokens == len(w) for r, w in zip(got.responses, want, strict=True)
            )


def test_batched_draft_model_is_identical(paths, prior_draft_price):
    """A draft model inside continuous batching: its own slots draft for every request in
    batched steps; outputs equal plain decoding, greedy and seeded."""
    kw_load = {"device": "cpu", "threads": 2, "context_length": 160}
    with (
        metallic.load(paths["q8"], parallel=3, batch_size=24, **kw_load) as m,
        metallic.load(paths["f32"], parallel=3, batch_size=8, **kw_load) as draft,
    ):
        prompts = [_repetitive(m, 8 + i, 30 + i) for i in range(5)]
        for kw in ({"max_tokens": 40}, {"max_tokens": 30, "temperature": 0.8, "seed": 3}):
            got = m.batch_generate(prompts, draft=draft, num_draft_tokens=4, **kw)
            for i, p in enumerate(prompts):
                m.reset_cache()
                assert got.texts[i] == m.generate(p, **kw)
            if "temperature" not in kw:  # the f32 copy of the weights drafts the q8 model well
                accepted = sum(r.accepted_tokens for r in got.responses)
                drafted = sum(r.draft_tokens for r in got.responses)
                assert accepted > 20 and accepted >= drafted // 2, (accepted, drafted)
        draft.generate([1, 2, 3], max_tokens=2)  # the draft model stays usable


def test_batched_draft_arguments(tiny, paths):
    with pytest.raises(errors.InvalidArgument, match=r"^\[scheduler\] draft: expected None"):
        tiny.scheduler(draft="some-model")
    with pytest.raises(errors.InvalidArgument, match="num_draft_tokens"):
        tiny.scheduler(draft="prompt-lookup", num_draft_tokens=0)
    with pytest.raises(errors.InvalidArgument, match="target model itself"):
        tiny.scheduler(draft=tiny)
    kw = {"device": "cpu", "threads": 1, "context_length": 64}
    with metallic.load(paths["other"], **kw) as other, pytest.raises(errors.InvalidArgument):
        tiny.scheduler(draft=other)  # another vocabulary
    with (
        metallic.load(paths["q8"], parallel=2, **kw) as two,
        metallic.load(paths["f32"], **kw) as one,
        pytest.raises(errors.InvalidArgument, match=r"parallel >= 2 .*got parallel=1"),
    ):
        two.scheduler(draft=one)


class _Scripted:
    """A drafter whose draft is always ``[guess] * k``; the caller appends the real tokens."""

    match = 3

    def __init__(self):
        self.guess = 0

    def reset(self, context):
        pass

    def append(self, token):
        pass

    def draft(self, k):
        return [self.guess] * k


def _rounds(spec, real, n):
    """n steps of generate.stream's protocol; each step's next real token is real(step).
    Returns how many steps sent drafts."""
    sent = 0
    for step in range(n):
        drafts = spec.propose(8)
        if drafts:
            sent += 1
            j = 0
            while j < len(drafts) and drafts[j] == real(step):
                j += 1
            spec.update(len(drafts), j)
        spec.append(real(step))
    return sent


def test_policy_stops_drafting_what_is_rejected_and_comes_back():
    spec = Speculator(_Scripted(), 8)
    spec.observe_decode(3e-3)
    assert _rounds(spec, lambda s: 1, 40) <= 6  # every draft wrong: a few tries, then none
    assert spec.p("long") < 0.3
    # The declined drafts' first tokens are still checked: once they would be right, drafting
    # resumes, and full acceptance grows the draft length to the cap.
    assert _rounds(spec, lambda s: 0, 40) >= 30
    assert spec.k == 8 and spec.p("long") > 0.9


def test_policy_weighs_the_measured_verify_cost():
    cheap, dear = Speculator(_Scripted(), 8), Speculator(_Scripted(), 8)
    for s in (cheap, dear):
        s.observe_decode(3e-3)
        s._observe("long", 6, 10)  # acceptance ~0.6
    for _ in range(30):
        for n in range(1, 9):
            cheap.observe_verify(n, 3e-3 * (1 + 0.05 * n))  # a bandwidth-bound device
            dear.observe_verify(n, 3e-3 * (1 + n))  # every extra token costs a decode
    assert cheap.cost[4] < 1.25 and dear.cost[1] > 1.9
    p = cheap.p("long")
    assert cheap.gain(4, p) > 1.5 and dear.gain(1, p) < 1.0
    assert cheap.propose(8) and dear.propose(8) == []
    # Without timings the prior holds; timings of another length leave a length alone.
    fresh = Speculator(_Scripted(), 8)
    fresh.observe_decode(3e-3)
    fresh.observe_verify(2, 9e-3)
    assert fresh.cost[1] == 1 + Speculator._PRIOR_R and fresh.cost[2] > 1 + 2 * Speculator._PRIOR_R


def test_step_cost_prices_drafts_from_step_times():
    """The scheduler's fit of step time = a + c * tokens: drafts cost rho = c T0 / (a + c T0)."""
    cpu, gpu, flat = StepCost(0.3), StepCost(0.3), StepCost(0.3)
    assert cpu.rho(4) == 0.3  # nothing observed: the prior
    for i in range(60):
        n = 1 + i % 9
        cpu.observe(n, 2e-3 + 1e-3 * n)  # compute-bound: each token 1 ms over 2 ms fixed
        gpu.observe(n, 10e-3 + 5e-5 * n)  # bandwidth-bound: tokens nearly free
        flat.observe(4, 6e-3)  # always 4 tokens: no slope to fit
    assert cpu.rho(1) == pytest.approx(1 / 3, rel=1e-6)
    assert cpu.rho(8) == pytest.approx(0.8, rel=1e-6)
    assert gpu.rho(8) == pytest.approx(0.4e-3 / 10.4e-3, rel=1e-6)
    assert flat.rho(4) == 0.3
    spec = Speculator(_Scripted(), 8)
    spec.price(cpu.rho(8))
    spec._observe("long", 7, 10)  # acceptance 0.7 is not worth it at 0.8 a token...
    assert spec.propose(8) == []
    spec.price(gpu.rho(8))  # ...and is where a token costs 4 % of a step
    assert len(spec.propose(8)) >= 1
