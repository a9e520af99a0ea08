"""Device sampling (shaders/sample.h: argmax_*, sample_*) and softmax (shaders/softmax.h) on the
Metal emulator, against NumPy and against the native CPU sampler.

Greedy is exact: the first index of the largest logit, like the CPU sampler.

Sampling: every probability is bit-identical to the CPU sampler's (same float32 expression, same
expf), so candidate sets, orders and min_p decisions are exact; only running sums differ (float32
on the device, float64 on the CPU). A device sum of nonnegative terms along a chain of at most D
roundings is within D * U of the exact value, relative to the mass being summed (U = 2**-24, the
float32 unit roundoff). The longest chain is full mode's: a chunk sum (32 per-thread adds + 31 in
the emulator's lane-order simd_sum + 7 over simdgroups), 32 chunk prefixes, then inside the chunk
14 for the thread scan, 1 and 32 per-thread adds: D = 136 (top-k / nucleus: at most 103). u is
rounded to float and multiplied (2 U). Two such sums compared: MARGIN = (2 * 136 + 2) * U
(1.6e-5). Tokens whose CDF interval lies within MARGIN * mass of u * mass (or of top_p * total
for the nucleus cut) may come out either way; `sample_np.Rule.expect` lists them. The device must
return the exact token whenever that set has one member, and in practice (its sums are far
closer than the bound) gives the exact token in all but a rare draw: checked too.

Every dispatch also runs with each threadgroup's lanes in reverse order and must give
bit-identical buffers (threadgroup memory is poisoned with NaN; a missing barrier shows).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from emu_harness import (
    CONST,
    ROOT,
    _args,
    pack,
    run_both_orders,
)
from metallic import _core, errors
from sample_np import Rule, probs, splitmix64_uniform

U = 2.0**-24
MARGIN = (2 * 136 + 2) * U
T = CONST["kSampleThreads"]
K = CONST["kSampleMaxTopK"]
CHUNK = CONST["kSampleChunk"]
NO_TOKEN, FALLBACK = CONST["kSampleNoToken"], CONST["kSampleFallback"]

SampleArgs = _args(
    "SampleArgs",
    [("n", "u"), ("top_k", "u"), ("inv_temp", "f"), ("top_p", "f"), ("min_p", "f"), ("u", "f")]
    + [("pad0", "u"), ("pad1", "u")],
)
SoftmaxArgs = _args(
    "SoftmaxArgs", [("n", "u"), ("x_stride", "u"), ("out_stride", "u"), ("scale", "f")]
)


def test_args_mirror_args_h():
    sizes = dict(re.findall(r"sizeof\((\w+)\) == (\d+)", (ROOT / "shaders/args.h").read_text()))
    assert int(sizes["SampleArgs"]) == SampleArgs.itemsize
    assert int(sizes["SoftmaxArgs"]) == SoftmaxArgs.itemsize
    assert CONST["kSampleScratchWordsPerChunk"] == 2 + 2 * K
    assert CONST["kSampleMaxVocab"] == 262144


def chunks(n: int) -> int:
    return -(-n // CHUNK)


def scratch_for(n: int) -> np.ndarray:
    # Poisoned: a word the final pass reads without a partial pass having written it shows up.
    return np.full(chunks(n) * CONST["kSampleScratchWordsPerChunk"], 0x7FC0DEAD, np.uint32)


def device_argmax(emu, x: np.ndarray) -> int:
    n, scratch, out = len(x), scratch_for(len(x)), np.zeros(1, np.uint32)
    args = pack(SampleArgs, n=n)
    run_both_orders(emu, "argmax_partial_f32", (chunks(n),), (T,), {0: x, 1: scratch, 3: args}, [1])
    run_both_orders(emu, "argmax_final_f32", (1,), (T,), {1: scratch, 2: out, 3: args}, [2])
    return int(out[0])


class DeviceSampler:
    """The 2 or 3 dispatches of one sampled token; the partial passes do not depend on u, so one
    run of them serves every draw()."""

    def __init__(self, emu, x, inv_temp, top_k=0, top_p=1.0, min_p=0.0):
        self.emu, self.x, n = emu, x, len(x)
        self.args = pack(SampleArgs, n=n, top_k=top_k, inv_temp=inv_temp, top_p=top_p, min_p=min_p)
        self.scratch = scratch_for(n)
        bufs = {0: x, 1: self.scratch, 3: self.args}
        run_both_orders(emu, "sample_partial_f32", (chunks(n),), (T,), bufs, [1])
        self.dispatches = 2
        if top_k == 0 or top_k >= n:  # sample_needs_sums (args.h)
            run_both_orders(emu, "sample_sums_f32", (chunks(n),), (T,), bufs, [1])
            self.dispatches = 3

    def draw(self, u: float) -> int:
        self.args["u"] = u
        out = np.zeros(1, np.uint32)
        bufs = {0: self.x, 1: self.scratch.copy(), 2: out, 3: self.args}
        run_both_orders(self.emu, "sample_final_f32", (1,), (T,), bufs, [2])
        return int(out[0])


def check_draws(emu, x, temp, top_k, top_p, min_p, seeds, cpu=True) -> tuple[int, int]:
    """Device draws for the seeds' first uniforms against the NumPy rule (and the CPU sampler);
    returns (draws that gave the exact rule's token, draws)."""
    inv_t = np.float32(1) / np.float32(temp)
    dev = DeviceSampler(emu, x, inv_t, top_k, top_p, min_p)
    assert dev.dispatches == (2 if 0 < top_k < len(x) else 3)
    rule = Rule(x, inv_t, top_k, top_p, min_p, MARGIN, K)
    same = 0
    for seed in seeds:
        u = splitmix64_uniform(seed)
        want = rule.expect(u)
        got = dev.draw(u)
        ctx = f"seed={seed} u={u} want={want}"
        if want.exact is None:
            assert got == NO_TOKEN, ctx
            continue
        if cpu:
            s = _core.Sampler(len(x), float(np.float32(temp)), top_k, top_p, min_p, seed=seed)
            cpu_tok = s.sample(x)
            assert cpu_tok == want.exact or (cpu_tok in want.tokens and len(want.tokens) > 1), ctx
        if got == FALLBACK:
            assert want.fallback != "never", ctx
            continue
        assert want.fallback != "must", ctx
        assert got in want.tokens, f"got {got}; {ctx}"
        same += got == want.exact
        if len(want.tokens) == 1:
            assert got == want.exact, ctx
            if cpu:
                assert got == cpu_tok, ctx
    return same, len(seeds)


# ----------------------------------------------------------------------------- argmax


def logits(kind: str, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed + n)
    x = (rng.standard_normal(n) * 3).astype(np.float32)
    if kind == "ties":  # the maximum repeated (several chunks apart when n is large)
        x[rng.choice(n, min(n, 5), replace=False)] = x.max() + 1
        x[rng.choice(n, n // 4, replace=False)] = np.float32(0.5)
    elif kind == "neginf":
        x[rng.random(n) < 0.5] = -np.inf
        x[-1] = -np.inf
    elif kind == "const":  # every logit tied: the candidates are the lowest ids
        x = np.full(n, np.float32(1.5))
    elif kind == "flat":
        x = (rng.standard_normal(n) * 0.01).astype(np.float32)
    elif kind == "signed_zero":
        x = np.where(rng.random(n) < 0.5, np.float32(-0.0), np.float32(0.0)).astype(np.float32)
        x[rng.random(n) < 0.5] = -1
    return x


@pytest.mark.parametrize(
    ("n", "kind"),
    [(n, k) for n in (1, 31, 1000, 50_000) for k in ("random", "ties", "neginf")]
    + [(262_144, "random"), (262_144, "ties")],
)
def test_argmax(emu, n, kind):
    x = logits(kind, n)
    want = int(np.argmax(x)) if np.isfinite(x.max()) or x.max() == np.inf else NO_TOKEN
    assert device_argmax(emu, x) == want
    if want != NO_TOKEN and n <= 50_000:
        assert _core.Sampler(n, 0.0).sample(x) == want


def test_argmax_edges(emu):
    assert device_argmax(emu, np.full(70_000, -np.inf, np.float32)) == NO_TOKEN  # CPU raises
    x = np.array([-0.0, 0.0, -1.0], np.float32)
    assert device_argmax(emu, x) == 0  # -0.0 == 0.0: lowest index
    assert device_argmax(emu, np.array([np.nan, 1.0, np.nan, 1.0], np.float32)) == 1  # NaN skipped
    assert device_argmax(emu, np.array([1.0, np.inf, np.inf], np.float32)) == 1
    big = np.zeros(262_144, np.float32)
    big[[200_000, 9000, 262_143]] = 2.0  # tie across chunks: lowest index
    assert device_argmax(emu, big) == 9000


# ----------------------------------------------------------------------------- softmax


@pytest.mark.parametrize(
    ("rows", "n", "threads"), [(3, 1, 32), (2, 31, 256), (2, 1000, 64), (1, 50_000, 256)]
)
@pytest.mark.parametrize("scale", [1.0, 0.125])
def test_softmax(emu, rows, n, threads, scale):
    rng = np.random.default_rng(n)
    x = (rng.standard_normal((rows, n + 3)) * 8).astype(np.float32)  # stride > n
    x[:, 1::7] = -np.inf
    x[:, 0] = 5.0  # a finite maximum in every row
    out = np.full((rows, n + 1), 7, np.float32)  # the column past n must stay untouched
    args = pack(SoftmaxArgs, n=n, x_stride=n + 3, out_stride=n + 1, scale=scale)
    (got,) = run_both_orders(emu, "softmax_f32", (rows,), (threads,), {0: x, 1: out, 2: args}, [1])
    assert np.all(got[:, n] == 7)
    y = scale * x[:, :n].astype(np.float64)
    ref = np.exp(y - y.max(1, keepdims=True))
    ref /= ref.sum(1, keepdims=True)
    # Exponent: scale * x, the maximum m (one of those products) and y - m each round once
    # (<= U |y| + U |m| + U |y - m| <= 4 A U absolute for A = max |scale x|, so 4 A U relative
    # after exp); expf is within 1 ulp (2 U). The sum of those terms carries the same relative
    # error plus its own chain (ceil(n / threads) per thread, 31 in simd_sum, <= 31 over
    # simdgroups); the division 1 U.
    a = np.abs(np.where(np.isfinite(x[:, :n]), scale * x[:, :n], 0)).max()
    chain = -(-n // threads) + 62
    rel = (2 * (4 * a + 2) + chain + 1) * U
    # Below float32's normal range the spacing is 2**-149 (absolute), not relative.
    np.testing.assert_allclose(got[:, :n], ref, rtol=rel, atol=2.0**-148)
    assert np.all(got[:, :n][np.isinf(x[:, :n])] == 0)


def test_softmax_long_row(emu):
    x = (np.random.default_rng(3).standard_normal((1, 262_144)) * 4).astype(np.float32)
    out = np.zeros_like(x)
    args = pack(SoftmaxArgs, n=262_144, x_stride=262_144, out_stride=262_144, scale=1.0)
    (got,) = run_both_orders(emu, "softmax_f32", (1,), (1024,), {0: x, 1: out, 2: args}, [1])
    ref = np.exp(x[0].astype(np.float64) - x.max())
    ref /= ref.sum()
    rel = (2 * (4 * np.abs(x).max() + 2) + 256 + 62 + 1) * U  # the bound above, 1024 threads
    np.testing.assert_allclose(got[0], ref, rtol=rel, atol=2.0**-148)


# ----------------------------------------------------------------------------- sampling

SAMPLE_CASES = [  # (n, kind, temperature, top_k, top_p, min_p)
    (1, "random", 1.0, 0, 1.0, 0.0),
    (1, "random", 0.7, 0, 0.5, 0.2),
    (31, "random", 1.0, 0, 1.0, 0.0),  # full mode, id order
    (31, "ties", 0.8, 5, 1.0, 0.0),  # top-k, ties at the boundary: lowest ids
    (31, "signed_zero", 1.0, 7, 1.0, 0.0),  # -0.0 == 0.0
    (3000, "const", 1.0, 10, 1.0, 0.0),  # ties inside every chunk: bisection on ids
    (1000, "random", 0.7, 40, 0.9, 0.05),
    (1000, "random", 1.3, 256, 1.0, 0.0),  # the cap itself
    (1000, "neginf", 1.0, 0, 0.95, 0.0),  # nucleus over -inf tokens
    (1000, "random", 2.0, 0, 1.0, 0.1),  # full mode with min_p
    (8193, "ties", 1.0, 3, 0.5, 0.0),  # two chunks, the second holding one logit
    (50_000, "random", 0.6, 0, 0.9, 0.0),  # nucleus across chunks
    (50_000, "random", 1.0, 0, 1.0, 0.0),  # full mode across chunks
    (50_000, "ties", 1.0, 100, 1.0, 0.02),
]


@pytest.mark.parametrize(("n", "kind", "temp", "top_k", "top_p", "min_p"), SAMPLE_CASES)
def test_sample_matches_cpu_rule(emu, n, kind, temp, top_k, top_p, min_p):
    x = logits(kind, n, seed=1)
    same, total = check_draws(emu, x, temp, top_k, top_p, min_p, range(40))
    # Device sums are far closer than MARGIN in practice: the exact token nearly every time.
    assert same >= total - 2


@pytest.mark.parametrize(
    ("top_k", "top_p", "min_p"), [(0, 1.0, 0.0), (50, 1.0, 0.0), (0, 0.8, 0.0)]
)
def test_sample_gemma_vocab(emu, top_k, top_p, min_p):
    x = logits("random", 262_144, seed=2)
    x[[5, 140_000]] = x.max() + 0.5  # tied maximum in different chunks
    same, total = check_draws(emu, x, 0.8, top_k, top_p, min_p, range(6))
    assert same >= total - 1


def test_nucleus_falls_back_only_when_it_must(emu):
    flat = logits("flat", 1000, seed=3)  # ~900 tokens in the 0.9 nucleus: more than K
    assert check_draws(emu, flat, 1.0, 0, 0.9, 0.0, range(3)) == (0, 3)  # all FALLBACK
    tied = np.full(600, -5.0, np.float32)
    tied[:10] = 3.0
    assert DeviceSampler(emu, tied, 1.0, 0, 0.9995).draw(0.5) == FALLBACK  # ~600 in the nucleus
    assert DeviceSampler(emu, tied, 1.0, 0, 0.9).draw(0.5) == 5  # the cut lies above the ties
    tied[10:] = -1.0  # now the cut (mass 0.6) falls inside the candidates, at the tied p
    assert check_draws(emu, tied, 1.0, 0, 0.6, 0.0, range(3)) == (0, 3)
    small = logits("flat", K, seed=4)  # all tokens are candidates: always exact
    assert FALLBACK not in {DeviceSampler(emu, small, 1.0, 0, 0.99).draw(u) for u in (0.1, 0.9)}


@pytest.mark.parametrize(("top_k", "top_p"), [(0, 1.0), (3, 1.0), (0, 0.999)])
def test_min_p_keeps_equality(emu, top_k, top_p):
    """p == min_p stays (p >= min_p): ties at p_max with min_p = 1, and min_p = expf(-1)."""
    x = np.array([2.0, 2.0, 1.0, 0.0], np.float32)
    assert DeviceSampler(emu, x, 1.0, top_k, top_p, 1.0).draw(0.9) == 1
    e1 = float(probs(np.array([-1.0], np.float32), 0.0, 1.0)[0])
    assert check_draws(emu, x, 1.0, top_k, top_p, e1, range(20)) == (20, 20)
    assert DeviceSampler(emu, x, 1.0, top_k, top_p, e1).draw(0.99) == 2


@pytest.mark.parametrize("top_k", [0, 4])
def test_draw_on_exact_boundaries(emu, top_k):
    """Equal probabilities: every running sum is an exact integer, so u * mass landing on one
    takes the next token (u < cdf, strictly), on the device as on the CPU."""
    x = np.array([0.0] * 4 + [-3.0] * 4, np.float32)
    x[4:] = -np.inf if top_k == 0 else -3.0
    for u, want in [(0.0, 0), (0.25, 1), (0.5, 2), (0.75, 3)]:
        assert DeviceSampler(emu, x, 1.0, top_k).draw(u) == want
    seed = next(s for s in range(1000) if splitmix64_uniform(s) < 0.25)
    assert _core.Sampler(8, 1.0, top_k, seed=seed).sample(x) == 0


def test_sample_limits(emu):
    x = logits("random", 1000)
    assert DeviceSampler(emu, x, 1.0, K + 1).draw(0.3) == FALLBACK  # top_k above the cap
    assert DeviceSampler(emu, x, 1.0, 1000).draw(0.3) == DeviceSampler(emu, x, 1.0, 0).draw(0.3)
    assert DeviceSampler(emu, x, 1.0, 1).draw(0.99) == int(np.argmax(x))
    ninf = np.full(40, -np.inf, np.float32)
    for k, p in [(0, 1.0), (0, 0.5), (3, 1.0)]:
        assert DeviceSampler(emu, ninf, 1.0, k, p).draw(0.5) == NO_TOKEN
        with pytest.raises(errors.InvalidArgument, match="mask"):
            _core.Sampler(40, 1.0, k, p).sample(ninf)
    pinf = np.zeros(40, np.float32)
    pinf[3] = np.inf
    assert DeviceSampler(emu, pinf, 1.0).draw(0.5) == NO_TOKEN
    huge = np.zeros(CONST["kSampleMaxVocab"] + 1, np.float32)
    assert DeviceSampler(emu, huge, 1.0, 8).draw(0.5) == FALLBACK


_LOGIT = st.one_of(
    st.floats(-20, 20, width=32),
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 5.0, float("-inf")]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    x=hnp.arrays(np.float32, st.integers(1, 600), elements=_LOGIT),
    temp=st.floats(0.05, 3.0),
    top_k=st.one_of(st.just(0), st.integers(1, 300)),
    top_p=st.one_of(st.just(1.0), st.floats(0.01, 1.0)),
    min_p=st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0)),
    seed=st.integers(0, 2**64 - 1),
)
def test_sample_property(emu, x, temp, top_k, top_p, min_p, seed):
    """Any logits / k / p / min_p / u: the device token is one the CPU rule allows within the
    rounding margin, equals the rule's (and the CPU sampler's) token when only one is allowed,
    and FALLBACK / NO_TOKEN exactly where the contract says."""
    if K < top_k < len(x):
        assert DeviceSampler(emu, x, 1.0, top_k).draw(0.5) == FALLBACK
        return
    check_draws(emu, x, temp, top_k, top_p, min_p, [seed])
