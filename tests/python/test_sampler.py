"""The native token sampler (``metallic._core.Sampler``) and ``metallic.SamplingParams``.

Order under test (docs/CONTRACTS.md §1): repetition penalty → temperature 0 → argmax (lowest
index on ties); else top_k → softmax(logits / T) → top_p → min_p → renormalise → seeded draw.

The sampler computes probabilities in float32 (``expf`` of a float32 exponent ``e``) and sums
them in float64. Each probability therefore carries a relative error <= (3|e| + 2) u with
u = 2**-24 (three roundings in the exponent, ~2 ulp in expf). Weighted by the probabilities
themselves, any cumulative mass fraction is off by <= u * (2 + 3 * E_p|e|) <= u * (2 + 3 * 30)
< 1e-5 for the logit ranges used here (|e| <= 40 / 0.05 can be large only where p < e^-30).
``MARGIN = 1e-5`` therefore separates "allowed" sets computed in float64 from everything the
float32 kernel can do, without hiding any wrong token that lies further than that from a
boundary.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from metallic import SamplingParams, _core, errors

Sampler = _core.Sampler
MARGIN = 1e-5
FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ----------------------------------------------------------------------------- references


def penalised(logits: np.ndarray, history: list[int], penalty: float, window: int) -> np.ndarray:
    """llama.cpp rule on the distinct tokens of the last `window` accepted, in float32."""
    w = np.array(logits, np.float32)
    p = np.float32(penalty)
    for t in set(history[-window:] if window else []):
        w[t] = w[t] / p if w[t] > 0 else w[t] * p
    return w


def order_by_logit(w: np.ndarray) -> np.ndarray:
    """Token ids by descending logit, ties by ascending id (the sampler's tie-break)."""
    return np.lexsort((np.arange(len(w)), -w.astype(np.float64)))


def allowed(w: np.ndarray, t: float, top_k: int, top_p: float, min_p: float) -> set[int]:
    """Superset (by MARGIN) of the tokens the sampler may return for penalised logits w."""
    cand = order_by_logit(w)
    if 0 < top_k < len(w):
        cand = cand[:top_k]  # exact: integer ranks, no rounding involved
    e = (w[cand].astype(np.float64) - w[cand].max()) / t
    p = np.exp(e)  # p_max = 1, same normalisation as the kernel
    keep = np.ones(len(cand), bool)
    if top_p < 1:
        csum = np.cumsum(p) / p.sum()  # p is sorted descending already (cand order)
        last = int(np.searchsorted(csum, min(1.0, top_p + MARGIN)))
        last = min(last, len(p) - 1)
        keep &= p >= p[last] * (1 - MARGIN)  # near-ties may sort either way in float32
    if min_p > 0:
        keep &= p >= min_p * (1 - MARGIN)
    return {int(i) for i in cand[keep]}


def draws(s, logits: np.ndarray, n: int) -> np.ndarray:
    return np.array([s.sample(logits) for _ in range(n)])


def chi2_sf_even(x: float, dof: int) -> float:
    """Survival function of chi-square with an even number of degrees of freedom (closed form)."""
    assert dof % 2 == 0
    h = x / 2
    return math.exp(-h) * sum(h**j / math.factorial(j) for j in range(dof // 2))


def splitmix64_uniforms(seed: int, n: int) -> list[float]:
    mask, s, out = (1 << 64) - 1, seed, []
    for _ in range(n):
        s = (s + 0x9E3779B97F4A7C15) & mask
        z = s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out.append(((z ^ (z >> 31)) >> 11) * 2.0**-53)
    return out


_LOGIT = st.one_of(st.floats(-20, 20, width=32), st.sampled_from([0.0, 1.0, -1.0, 5.0]))


def _logits(min_size=1, max_size=40):
    return hnp.arrays(np.float32, st.integers(min_size, max_size), elements=_LOGIT)


# ----------------------------------------------------------------------------- properties


@FAST
@given(logits=_logits(), topk=st.integers(0, 5), seed=st.integers(0, 2**64 - 1))
def test_greedy_is_first_argmax(logits, topk, seed):
    before = logits.copy()
    assert Sampler(len(logits), 0.0, topk, 0.5, 0.3, 1.0, 64, seed).sample(logits) == np.argmax(
        logits
    )
    # top_k = 1 at any temperature is also the first argmax (ties by lowest id).
    assert Sampler(len(logits), 1.7, 1, 1.0, 0.0, 1.0, 64, seed).sample(logits) == np.argmax(logits)
    np.testing.assert_array_equal(logits, before)


@FAST
@given(
    logits=_logits(),
    t=st.floats(0.05, 3.0),
    top_k=st.integers(0, 45),
    top_p=st.one_of(st.just(1.0), st.floats(0.01, 1.0)),
    min_p=st.one_of(st.just(0.0), st.floats(0.0, 1.0)),
    seed=st.integers(0, 2**64 - 1),
)
def test_truncation_never_returns_a_disallowed_token(logits, t, top_k, top_p, min_p, seed):
    logits.setflags(write=False)  # read-only input must be accepted (and is never written)
    s = Sampler(len(logits), t, top_k, top_p, min_p, 1.0, 64, seed)
    ok = allowed(logits, t, top_k, top_p, min_p)
    got = set(draws(s, logits, 30).tolist())
    assert got <= ok, f"drew {sorted(got - ok)} outside the allowed set {sorted(ok)}"


@pytest.mark.parametrize(("t", "top_p"), [(0.3, 0.5), (1.0, 0.5), (1.0, 0.99), (3.0, 0.9)])
def test_top_p_large_vocab(t, top_p):
    """50k tokens: the kernel's threshold search (1e-3, 1e-6, ... of p_max) must find the
    exact nucleus even when it holds thousands of tokens far below the first threshold."""
    x = (np.random.default_rng(11).standard_normal(50_000) * 3).astype(np.float32)
    ok = allowed(x, t, 0, top_p, 0.0)
    got = set(draws(Sampler(len(x), t, 0, top_p, 0.0, 1.0, 64, 5), x, 200).tolist())
    assert got <= ok, sorted(got - ok)[:10]


@FAST
@given(
    logits=_logits(2, 30),
    penalty=st.floats(0.3, 4.0),
    window=st.integers(0, 6),
    history=st.lists(st.integers(0, 29), max_size=12),
    t=st.sampled_from([0.0, 0.8]),
)
def test_repetition_penalty_greedy(logits, penalty, window, history, t):
    n = len(logits)
    history = [h % n for h in history]
    before = logits.copy()
    s = Sampler(n, t, 1, 1.0, 0.0, penalty, window, 0)  # t > 0 with top_k = 1: also greedy
    for h in history:
        s.accept(h)
    assert s.sample(logits) == np.argmax(penalised(logits, history, penalty, window))
    np.testing.assert_array_equal(logits, before)


def test_repetition_penalty_crafted():
    def greedy(logits, accepted, penalty=2.0, window=64):
        s = Sampler(len(logits), repetition_penalty=penalty, repetition_window=window)
        for a in accepted:
            s.accept(a)
        return s.sample(np.array(logits, np.float32))

    assert greedy([2.0, 1.5], []) == 0
    assert greedy([2.0, 1.5], [0]) == 1  # positive logit divided: 2 / 2 = 1 < 1.5
    assert greedy([2.0, 0.9], [0]) == 0  # 1.0 > 0.9
    assert greedy([-1.0, -1.5], [0]) == 1  # negative logit multiplied: -2 < -1.5
    assert greedy([-1.0, -2.1], [0]) == 0  # -2 > -2.1
    assert greedy([0.0, -0.1], [0], penalty=5.0) == 0  # zero stays zero
    # Once per distinct token: 2 / 1.5 = 1.33 > 1.2 (twice would give 0.89 < 1.2).
    assert greedy([2.0, 1.2], [0, 0, 0], penalty=1.5) == 0
    assert greedy([2.0, 1.5, 1.2], [0, 2, 2], window=2) == 0  # token 0 left the window
    assert greedy([2.0, 1.5, 1.2], [0, 2, 2], window=3) == 1  # 0 still inside: 1.0 < 1.5
    assert greedy([2.0, 1.5], [0], window=0) == 0  # window 0: penalty off
    assert greedy([2.0, 1.5], [0], penalty=0.5) == 0  # penalty < 1 boosts: 4 > 1.5


def test_same_seed_same_sequence_and_reset():
    logits = np.linspace(-1, 1, 50).astype(np.float32)
    a, b = (Sampler(50, 1.0, 0, 0.95, 0.0, 1.3, 8, 1234) for _ in range(2))
    seq_a = []
    for _ in range(100):
        seq_a.append(a.sample(logits))
        a.accept(seq_a[-1])
    seq_b = []
    for _ in range(100):
        seq_b.append(b.sample(logits))
        b.accept(seq_b[-1])
    assert seq_a == seq_b and len(set(seq_a)) > 10
    a.reset()  # RNG and history restart: the same sequence again
    seq_c = []
    for _ in range(100):
        seq_c.append(a.sample(logits))
        a.accept(seq_c[-1])
    assert seq_c == seq_a
    s1234, s1235 = Sampler(50, 1.0, seed=1234), Sampler(50, 1.0, seed=1235)
    assert draws(s1234, logits, 100).tolist() != draws(s1235, logits, 100).tolist()


def test_draws_follow_splitmix64_inverse_cdf():
    """No truncation: candidates stay in id order, so draw k is the first i with u_k < cdf_i."""
    logits = np.array([0.3, -1.0, 2.0, 0.0, 1.0, -0.5, 0.7], np.float32)
    p = np.exp(logits.astype(np.float64) - logits.max())
    cdf = np.cumsum(p)
    seed = 987654321
    got = draws(Sampler(len(logits), 1.0, seed=seed), logits, 500)
    for k, u in enumerate(splitmix64_uniforms(seed, 500)):
        target = u * cdf[-1]
        if np.min(np.abs(cdf - target)) < MARGIN * cdf[-1]:
            continue  # within float32 rounding of a boundary: either neighbour is right
        assert got[k] == int(np.searchsorted(cdf, target, side="right")), k


@FAST
@given(
    logits=hnp.arrays(
        np.float32,
        st.integers(1, 1300),  # up to 6 of draw_all's 256-id blocks, a partial last one
        elements=st.one_of(st.floats(-12, 12, width=32), st.sampled_from([0.0, -np.inf])),
    ),
    t=st.sampled_from([0.3, 1.0, 2.5]),
    seed=st.integers(0, 2**64 - 1),
)
def test_untruncated_draws_follow_the_id_order_cdf(logits, t, seed):
    """No top_k / top_p / min_p (OpenAI's defaults): the draw walks every id in id order, its
    probabilities exp((x - max) / t) in float32 and their sums in float64 (per-block sums, so a
    uniform within rounding of a boundary may go either way); a -inf logit is never drawn."""
    if not np.isfinite(logits).any():
        logits[0] = 0.0
    x = logits.astype(np.float32)
    p = np.exp((x - x.max()) * np.float32(1 / np.float32(t)), dtype=np.float32).astype(np.float64)
    cdf = np.cumsum(p)
    got = draws(Sampler(len(x), t, seed=seed), x, 30)
    for k, u in enumerate(splitmix64_uniforms(seed, 30)):
        assert np.isfinite(x[got[k]])
        target = u * cdf[-1]
        if np.min(np.abs(cdf - target)) < MARGIN * cdf[-1]:
            continue  # within rounding of a boundary: either neighbour is right
        assert got[k] == int(np.searchsorted(cdf, target, side="right")), k


@FAST
@given(
    logits=hnp.arrays(
        np.float32,
        st.integers(2, 400),
        elements=st.sampled_from([0.0, 1.0, -1.0, 2.5, 0.5, -np.inf]),
    ),
    top_k=st.integers(1, 60),
    seed=st.integers(0, 2**64 - 1),
)
def test_top_k_draw_order_is_logit_then_id(logits, top_k, seed):
    """Many ties and masked (-inf) logits: the top_k candidates (one heap scan) are walked in
    descending logit, ties by ascending id, the order the Metal sampler walks too (top_k >= the
    vocabulary is off: id order)."""
    if not np.isfinite(logits).any():
        logits[0] = 0.0
    n = len(logits)
    cand = order_by_logit(logits)[:top_k] if top_k < n else np.arange(n)
    p = np.exp(logits[cand].astype(np.float64) - logits.max())
    cdf = np.cumsum(p)
    got = draws(Sampler(len(logits), 1.0, top_k, seed=seed), logits, 40)
    for k, u in enumerate(splitmix64_uniforms(seed, 40)):
        target = u * cdf[-1]
        if np.min(np.abs(cdf - target)) < MARGIN * cdf[-1]:
            continue  # within float32 rounding of a boundary: either neighbour is right
        assert got[k] == cand[int(np.searchsorted(cdf, target, side="right"))], k


DIST_CASES = [  # (logits, temperature, top_k, top_p, min_p), each leaving an odd number of tokens
    ([1.0, 0.5, 0.0, -0.5, -2.0], 1.0, 0, 1.0, 0.0),
    ([1.0, 0.5, 0.0, -0.5, -2.0], 0.5, 0, 1.0, 0.0),
    ([3.0, 0.0, 1.0, 2.5, -1.0, 0.5, 2.0], 2.0, 3, 1.0, 0.0),
    ([0.0, 2.0, 1.0, -3.0, 1.5], 1.0, 0, 0.85, 0.0),  # sorted mass .42 .68 .93: keeps 3
    ([0.0, 2.0, 1.0, -3.0, 1.5, 1.2], 1.0, 0, 1.0, 0.4),  # p/p_max .14 1 .37 0 .61 .45: keeps 3
]


@pytest.mark.parametrize("case", DIST_CASES)
def test_empirical_distribution_matches_softmax(case):
    """20k draws; Pearson chi-square on the kept tokens, dropped tokens must never appear.

    With a fixed seed the test is deterministic; the threshold is the chi-square quantile with
    false-alarm probability 1e-6 for k - 1 degrees of freedom, so a correct sampler essentially
    never fails, while a 1% probability error on a 20% token (chi2 contribution ~100) is caught.
    """
    logits, t, top_k, top_p, min_p = case
    x = np.array(logits, np.float32)
    keep = allowed(x, t, top_k, top_p, min_p)
    p = np.exp((x.astype(np.float64) - x.max()) / t)
    mask = np.array([i in keep for i in range(len(x))])
    p = np.where(mask, p, 0) / p[mask].sum()
    n = 20000
    counts = np.bincount(
        draws(Sampler(len(x), t, top_k, top_p, min_p, seed=42), x, n), None, len(x)
    )
    assert np.all(counts[~mask] == 0)
    stat = float(np.sum((counts[mask] - n * p[mask]) ** 2 / (n * p[mask])))
    assert chi2_sf_even(stat, int(mask.sum()) - 1) > 1e-6, (counts, n * p)


def test_extreme_but_valid_inputs():
    x = np.array([-np.inf, 0.0, -np.inf, 1.0], np.float32)
    assert set(draws(Sampler(4, 1.0, seed=1), x, 200).tolist()) == {1, 3}  # -inf: p = 0
    assert Sampler(1, 1.0, seed=3).sample(np.array([5.0], np.float32)) == 0  # one-token vocab
    y = np.array([0.0, 1e-3, 0.0], np.float32)
    assert set(draws(Sampler(3, 1e-30, seed=1), y, 50).tolist()) == {1}  # T -> 0+: the argmax
    big = np.full(5, 1e30, np.float32)
    assert set(draws(Sampler(5, 1.0, top_k=2, seed=9), big, 100).tolist()) == {0, 1}  # ties: ids


# ----------------------------------------------------------------------------- errors

BAD_PARAMS = [
    ("n_vocab", {"n_vocab": 0}),
    ("temperature", {"temperature": -0.1}),
    ("temperature", {"temperature": float("nan")}),
    ("temperature", {"temperature": float("inf")}),
    ("top_k", {"top_k": -1}),
    ("top_p", {"top_p": 0.0}),
    ("top_p", {"top_p": 1.0001}),
    ("top_p", {"top_p": float("nan")}),
    ("min_p", {"min_p": -0.01}),
    ("min_p", {"min_p": 1.01}),
    ("min_p", {"min_p": float("nan")}),
    ("repetition_penalty", {"repetition_penalty": 0.0}),
    ("repetition_penalty", {"repetition_penalty": -1.0}),
    ("repetition_penalty", {"repetition_penalty": float("nan")}),
    ("repetition_window", {"repetition_window": -1}),
    ("repetition_window", {"repetition_window": (1 << 20) + 1}),
]


@pytest.mark.parametrize(("name", "kw"), BAD_PARAMS, ids=[f"{n}={v}" for n, v in BAD_PARAMS])
def test_native_sampler_rejects_bad_params(name, kw):
    args = {"n_vocab": 8, **kw}
    with pytest.raises(errors.InvalidArgument) as ei:
        Sampler(**args)
    assert str(ei.value).startswith(f"[sampler] {name}:"), str(ei.value)


def test_native_sampler_rejects_wrong_logits_length():
    s = Sampler(8, 1.0)
    for n in (7, 9, 0):
        with pytest.raises(errors.ShapeMismatch, match=r"^\[sampler\] logits: expected 8"):
            s.sample(np.zeros(n, np.float32))


@pytest.mark.parametrize(("name", "kw"), [b for b in BAD_PARAMS if b[0] != "n_vocab"])
def test_sampling_params_rejects_bad_values(name, kw):
    with pytest.raises(errors.InvalidArgument, match=rf"^\[sampling\] {name}:"):
        SamplingParams(**kw)


@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("top_k", {"top_k": True}),
        ("top_k", {"top_k": 2.0}),
        ("temperature", {"temperature": "0.5"}),
        ("temperature", {"temperature": True}),
        ("repetition_window", {"repetition_window": 3.0}),
        ("seed", {"seed": -1}),
        ("seed", {"seed": 1 << 64}),
        ("seed", {"seed": True}),
        ("seed", {"seed": 1.5}),
    ],
)
def test_sampling_params_rejects_bad_types(name, kw):
    with pytest.raises(errors.InvalidArgument, match=rf"^\[sampling\] {name}:"):
        SamplingParams(**kw)


def test_sampling_params_valid():
    p = SamplingParams(temperature=0.7, top_k=40, top_p=1, min_p=1, repetition_penalty=1.1, seed=0)
    assert p.resolved_seed() == 0 and 0 <= SamplingParams().resolved_seed() < 1 << 64
    assert SamplingParams(seed=(1 << 64) - 1).resolved_seed() == (1 << 64) - 1
    with pytest.raises(AttributeError):
        p.top_k = 3  # frozen


# ----------------------------------------------------------------------------- bias, mask, penalties


def adjusted(logits, history, *, rep=1.0, presence=0.0, frequency=0.0, window=64, bias=None):
    """Reference of the steps before greedy: bias → penalties (float32, as the kernel)."""
    w = np.array(logits, np.float32)
    for t, b in (bias or {}).items():
        w[t] += np.float32(b)
    recent = history[-window:] if window else []
    for t in set(recent):
        if rep != 1.0:
            w[t] = w[t] / np.float32(rep) if w[t] > 0 else w[t] * np.float32(rep)
        w[t] -= np.float32(presence) + np.float32(frequency) * np.float32(recent.count(t))
    return w


@FAST
@given(
    logits=_logits(2, 30),
    history=st.lists(st.integers(0, 29), max_size=20),
    rep=st.sampled_from([1.0, 1.3, 0.7]),
    presence=st.floats(-2, 2),
    frequency=st.floats(-2, 2),
    window=st.integers(0, 8),
    bias=st.dictionaries(st.integers(0, 29), st.floats(-100, 100), max_size=4),
)
def test_penalties_and_bias_greedy(logits, history, rep, presence, frequency, window, bias):
    n = len(logits)
    history = [h % n for h in history]
    bias = {t % n: b for t, b in bias.items()}
    s = Sampler(
        n,
        0.0,
        0,
        1.0,
        0.0,
        rep,
        window,
        0,
        presence_penalty=presence,
        frequency_penalty=frequency,
        logit_bias=list(bias.items()),
    )
    for h in history:
        s.accept(h)
    w = adjusted(
        logits, history, rep=rep, presence=presence, frequency=frequency, window=window, bias=bias
    )
    got = s.sample(logits)
    # The kernel may fuse presence + frequency * count into one FMA (one rounding fewer than
    # numpy), and the bias add and penalty subtract each round once: the adjusted logits agree to
    # a few ulp of the largest magnitude involved, so near-ties within 4 ulp may go either way.
    scale = max(float(np.max(np.abs(w))), 1.0) + 100.0
    assert w[got] >= w.max() - 4 * float(np.spacing(np.float32(scale)))


def test_frequency_counts_occurrences_in_the_window():
    x = np.array([3.0, 2.0, 0.0], np.float32)
    s = Sampler(3, repetition_window=4, frequency_penalty=0.6)
    for t in (0, 0):
        s.accept(t)
    assert s.sample(x) == 1  # 3 - 1.2 = 1.8 < 2
    for t in (2, 2, 2):  # token 0 leaves the 4-token window once, then is seen once: 3 - 0.6
        s.accept(t)
    assert s.sample(x) == 0
    s = Sampler(3, repetition_window=4, presence_penalty=1.5)
    s.accept(0)
    s.accept(0)
    assert s.sample(x) == 1  # once, whatever the count: 3 - 1.5 = 1.5 < 2


def test_min_tokens_masks_suppressed_ids_then_releases_them():
    x = np.array([0.0, 5.0, 1.0], np.float32)
    s = Sampler(3, min_tokens=2, suppress_ids=[1])
    assert [s.sample(x) for _ in range(3)] == [2, 2, 1]
    s.reset()
    assert s.sample(x) == 2


@FAST
@given(
    logits=_logits(1, 70),
    bits=st.lists(st.booleans(), min_size=70, max_size=70),
    t=st.sampled_from([0.0, 0.7, 1.5]),
    top_k=st.integers(0, 5),
    seed=st.integers(0, 2**64 - 1),
)
def test_mask_is_never_violated(logits, bits, t, top_k, seed):
    n = len(logits)
    allowed_ids = [i for i in range(n) if bits[i]]
    s = Sampler(n, t, top_k, 0.9, 0.05, 1.0, 64, seed)
    words = np.zeros((n + 31) // 32, np.uint32)
    for i in allowed_ids:
        words[i // 32] |= np.uint32(1 << (i % 32))
    s.mask[:] = words
    s.mask_enabled = True
    if not allowed_ids:
        with pytest.raises(errors.InvalidArgument, match=r"^\[sampler\] mask"):
            s.sample(logits)
        return
    got = set(draws(s, logits, 20).tolist())
    assert got <= set(allowed_ids)
    if t == 0.0:
        best = max(allowed_ids, key=lambda i: (logits[i], -i))
        assert got == {best}
    s.mask_enabled = False
    assert s.sample(logits) in range(n)


@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("presence_penalty", {"presence_penalty": float("nan")}),
        ("frequency_penalty", {"frequency_penalty": float("inf")}),
        ("min_tokens", {"min_tokens": -1}),
        ("top_logprobs", {"top_logprobs": 101}),
        ("top_logprobs", {"top_logprobs": -2}),
        ("logit_bias", {"logit_bias": [(8, 1.0)]}),
        ("logit_bias", {"logit_bias": [(0, float("nan"))]}),
        ("suppress_ids", {"suppress_ids": [-1]}),
    ],
)
def test_native_sampler_rejects_bad_new_params(name, kw):
    with pytest.raises(errors.InvalidArgument, match=rf"^\[sampler\] {name}:"):
        Sampler(8, **kw)


@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("presence_penalty", {"presence_penalty": 2.5}),
        ("frequency_penalty", {"frequency_penalty": "1"}),
        ("logit_bias", {"logit_bias": {-1: 1.0}}),
        ("logit_bias", {"logit_bias": {1: 101.0}}),
        ("logit_bias", {"logit_bias": {True: 1.0}}),
        ("logit_bias", {"logit_bias": [(1, 1.0)]}),
        ("min_tokens", {"min_tokens": -1}),
        ("min_tokens", {"min_tokens": 1.0}),
    ],
)
def test_sampling_params_rejects_bad_new_values(name, kw):
    with pytest.raises(errors.InvalidArgument, match=rf"^\[sampling\] {name}:"):
        SamplingParams(**kw)
