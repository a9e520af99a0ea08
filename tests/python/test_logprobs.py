"""Log-probabilities: ``logprobs=True, top_logprobs=k`` against log_softmax of ``model.logits``.

Tolerance: the native path sums exp(x - max) over the vocabulary in float64 from float32 exps
(each within ~2 ulp, u = 2**-24) and rounds the result to float32 once; numpy computes the same
in float64. For |logprob| <= 40 the float32 rounding of the result (<= 40 * 2**-24 ~ 2.4e-6) and
the exp errors (relative 2u on a sum, i.e. <= 2.4e-7 absolute in log space) stay below 5e-6.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import metallic
from metallic import _core, errors

tiny_models = pytest.importorskip("tiny_models")
ATOL = 5e-6
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    m = tiny_models.make_model(tmp_path_factory.mktemp("lp"), "llama", "q8_0", "gguf")
    with metallic.load(m.path, device="cpu", threads=2, context_length=64) as model:
        yield model


@pytest.mark.parametrize("temperature, k", [(0.0, 5), (0.9, 3), (1.5, 0)])
def test_logprobs_match_log_softmax_of_logits(tiny, temperature, k):
    prompt = [5, 17, 40, 3]
    rs = list(
        tiny.stream_generate(
            prompt,
            max_tokens=6,
            temperature=temperature,
            seed=11,
            logprobs=True,
            top_logprobs=k,
            logit_bias={2: -100.0},  # never EOS: six steps to check
            repetition_penalty=1.3,  # penalties, bias and temperature do not change logprobs
        )
    )
    ids = prompt + [r.token for r in rs]
    ref = tiny.logits(ids[:-1])[len(prompt) - 1 :]
    for r, row in zip(rs, ref, strict=True):
        lp = log_softmax(row)
        assert r.logprob == pytest.approx(lp[r.token], abs=ATOL)
        assert len(r.top_logprobs) == k
        order = np.lexsort((np.arange(len(lp)), -lp))[:k]
        got_ids = [t for t, _ in r.top_logprobs]
        # Ranks agree except between values closer than the tolerance.
        for (t, v), want in zip(r.top_logprobs, order, strict=True):
            assert v == pytest.approx(lp[want], abs=ATOL)
            assert t == want or abs(lp[t] - lp[want]) <= ATOL
        assert len(set(got_ids)) == k
        if temperature == 0.0 and k:
            assert r.token == got_ids[0]


def test_no_logprobs_by_default(tiny):
    r = next(iter(tiny.stream_generate([5, 6], max_tokens=1)))
    assert r.logprob is None and r.top_logprobs is None
    r = next(iter(tiny.stream_generate([5, 6], max_tokens=1, logprobs=True)))
    assert r.logprob <= 0 and r.top_logprobs == ()


@pytest.mark.parametrize(
    "kw", [{"logprobs": 1}, {"top_logprobs": -1}, {"top_logprobs": 101}, {"top_logprobs": 2.0}]
)
def test_bad_logprob_arguments(tiny, kw):
    with pytest.raises(errors.InvalidArgument, match=r"^\[sampling\] (top_)?logprobs"):
        tiny.generate([5], max_tokens=1, **kw)


@FAST
@given(
    x=st.lists(st.floats(-30, 30, width=32), min_size=1, max_size=50),
    k=st.integers(0, 8),
)
def test_native_logprobs_property(x, k):
    logits = np.array(x, np.float32)
    s = _core.Sampler(len(x), top_logprobs=k)
    tok = s.sample(logits)
    lp = log_softmax(logits)
    vals, ids = s.logprob_values, s.logprob_ids
    assert ids[0] == tok and vals[0] == pytest.approx(lp[tok], abs=ATOL)
    kk = min(k, len(x))
    # Ranked by the raw float32 logits (as the kernel): exact, even where the logprobs tie.
    want = np.lexsort((np.arange(len(x)), -logits.astype(np.float64)))[:kk]
    np.testing.assert_array_equal(ids[1 : 1 + kk], want)
    np.testing.assert_allclose(vals[1 : 1 + kk], lp[want], atol=ATOL)
