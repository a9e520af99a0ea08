"""CPU kernels (``metallic._core.kernels``) against independent NumPy references.

Tolerances are derived, not tuned. ``U = 2**-24`` is the float32 unit roundoff; a float32 sum of
``k`` terms in any order (sequential, 8 SIMD lanes + horizontal add, FMA or not) is within
``k * U * sum(|terms|)`` of the exact sum (Higham, "Accuracy and Stability", eq. 3.4/4.4; the
bound covers every summation order). The float64 references stand for the exact result (their own
error, ~1e-16, is far below every bound). Where a rounding bound would be too weak to see an
indexing bug (large n), a second test uses integer data on which every float32 operation is exact
in any order, so the result must match bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as GT
from gguf.quants import dequantize as gg_dequantize
from gguf.quants import quantize as gg_quantize
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from metallic import _core, errors

K = _core.kernels
QK = 32
U = 2.0**-24  # float32 unit roundoff
F32, F16, Q4_0, Q4_1, Q8_0, BF16 = 0, 1, 2, 3, 8, 30  # GGML type ids
FLOATS, QUANTS = (F32, F16, BF16), (Q8_0, Q4_0, Q4_1)
BLOCK_BYTES = {Q8_0: 34, Q4_0: 18, Q4_1: 20}
# kActMinAmax (native/cpu/quants.h): blocks with amax below it divide by d instead of
# multiplying by 127 / amax (which would overflow); test_act_min_amax_constant checks it.
ACT_MIN_AMAX = np.float32(3.7322e-37)
SIMD_MODES = [True, False]
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ----------------------------------------------------------------------------- numpy mirrors


def act_q8_blocks(x: np.ndarray):
    """NumPy mirror of the q8a definition (native/cpu/quants.h), float32 op for op.

    Per block of 32: a non-finite element -> d = NaN, q = 0, s = 0; amax == 0 or d = fl(amax / 127)
    == 0 -> all zero; amax >= ACT_MIN_AMAX -> q = rint(x * fl(127 / amax)); else
    q = clamp(rint(x / d), -127, 127); s = fl(d * sum(q)). Rounding is half to even. Returns
    (q as float, d, s, defined); every block is defined since the subnormal-scale fix (kept in
    the signature so callers can still assert it).
    """
    xb = np.asarray(x, np.float32).reshape(-1, QK)
    finite = np.isfinite(xb).all(axis=1)
    with np.errstate(all="ignore"):
        amax = np.abs(np.where(finite[:, None], xb, np.float32(0))).max(axis=1)
        d = amax / np.float32(127)
        inv = np.float32(127) / amax
        qf = np.where(
            (amax >= ACT_MIN_AMAX)[:, None],
            np.rint(xb * inv[:, None]),
            np.clip(np.rint(xb / d[:, None]), -127, 127),
        )
        zero = ~finite | (amax == 0) | (d == 0)
        qf[zero] = 0
        defined = np.ones(qf.shape[0], dtype=bool)
        d = np.where(finite, d, np.float32(np.nan)).astype(np.float32)
        # one float32 rounding of an exact integer sum; |x| > ~1e37 may overflow to inf, as natively
        s = np.where(zero, np.float32(0), d * qf.sum(axis=1, dtype=np.float32)).astype(np.float32)
    return qf, d, s, defined


def act_q8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    qf, d, s, defined = act_q8_blocks(x)
    assert defined.all(), "reference asked for a block the definition does not cover"
    return qf.astype(np.int8).reshape(-1), d, s


def decode(dtype: int, raw: np.ndarray, rows: int, cols: int) -> dict[str, np.ndarray]:
    """Own block decoder (independent of gguf and of the kernels), float64.

    Returns ``w`` (rows, cols) and, for quantized types, the parts the integer dot uses: ``d``
    (rows, nb) weight scales, ``u`` (rows, nb, 32) the unsigned/int codes entering the integer
    dot, and ``off`` (rows, nb) the coefficient of ``d_a * sum(q)`` (8*d for Q4_0, m for Q4_1).
    """
    raw = np.ascontiguousarray(raw, np.uint8)
    if dtype == F32:
        return {"w": raw.view("<f4").reshape(rows, cols).astype(np.float64)}
    if dtype == F16:
        return {"w": raw.view("<f2").reshape(rows, cols).astype(np.float64)}
    if dtype == BF16:
        bits = raw.view("<u2").astype(np.uint32) << 16
        return {"w": bits.view(np.float32).reshape(rows, cols).astype(np.float64)}
    nb = cols // QK
    blk = raw.reshape(rows, nb, BLOCK_BYTES[dtype])
    d = blk[..., 0:2].copy().view("<f2")[..., 0].astype(np.float64)
    if dtype == Q8_0:
        codes = blk[..., 2:].view(np.int8).astype(np.float64)
        w = d[..., None] * codes
        return {"w": w.reshape(rows, cols), "d": d, "u": codes, "off": np.zeros_like(d)}
    qs = blk[..., 2:18] if dtype == Q4_0 else blk[..., 4:20]
    nib = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.float64)
    if dtype == Q4_0:
        w, off = d[..., None] * (nib - 8), 8 * np.abs(d)
    else:
        m = blk[..., 2:4].copy().view("<f2")[..., 0].astype(np.float64)
        w, off = d[..., None] * nib + m[..., None], m
    return {"w": w.reshape(rows, cols), "d": d, "u": nib, "off": off}


def encode_weights(dtype: int, w: np.ndarray) -> np.ndarray:
    """Float weights (rows, cols) -> the raw 1-D bytes of ``dtype`` (gguf quantizer for blocks)."""
    w = np.ascontiguousarray(w, np.float32)
    if dtype == F32:
        return w.view(np.uint8).reshape(-1)
    if dtype == F16:
        return w.astype(np.float16).view(np.uint8).reshape(-1)
    if dtype == BF16:  # truncation gives a valid bf16 value; the decoder reads it back exactly
        return (w.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(-1)
    return np.ascontiguousarray(gg_quantize(w, GT(dtype))).reshape(-1)


def pack_blocks(dtype: int, d: np.ndarray, codes: np.ndarray, m: np.ndarray | None = None):
    """Hand-built blocks: d (rows, nb) f16 scales, codes (rows, nb, 32) ints (Q8: int8, Q4: 0..15)."""
    f16 = np.asarray(d, np.float16)[..., None].view(np.uint8)
    if dtype == Q8_0:
        parts = [f16, codes.astype(np.int8).view(np.uint8)]
    else:
        c = codes.astype(np.uint8)
        parts = (
            [f16, np.asarray(m, np.float16)[..., None].view(np.uint8)] if dtype == Q4_1 else [f16]
        )
        parts.append(c[..., :16] | (c[..., 16:] << 4))
    return np.ascontiguousarray(np.concatenate(parts, axis=-1)).reshape(-1)


def quant_bound(parts: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Rounding bound (nt, rows) of a quantized dot against the exact float64 formula.

    Integer block dots are exact; per block at most 4 float32 roundings act on the scale products
    (d_w*d_a, times the int sum or FMA, s = fl(d_a*sum q), the offset product/subtraction), and
    the nb block terms are then summed (sequentially, or in 8 lanes + 3 hsum levels + 1 final
    add). Hence |err| <= (nb + 8) * U * A with A = sum_b |d_w d_a| sum_i |u_i q_i| +
    |off_b| |d_a sum_i q_i|, a sum of absolute values that bounds every partial sum either kernel
    can form.
    """
    q, da, _ = act_q8(x)
    nb = parts["d"].shape[1]
    q = q.reshape(-1, nb, QK).astype(np.float64)
    da = da.reshape(-1, nb).astype(np.float64)
    int_abs = np.einsum("rbi,tbi->trb", np.abs(parts["u"]), np.abs(q))
    a = np.abs(parts["d"])[None] * np.abs(da)[:, None] * int_abs
    a += np.abs(parts["off"])[None] * np.abs(da[:, None] * q.sum(-1)[:, None])
    return (nb + 8) * U * a.sum(-1)


def reference(dtype: int, raw: np.ndarray, rows: int, cols: int, x: np.ndarray):
    """(exact value, rounding bound), both (nt, rows) float64."""
    parts = decode(dtype, raw, rows, cols)
    x = np.asarray(x, np.float32).reshape(-1, cols)
    if dtype in FLOATS:
        # n products (each rounded once, or fused) summed in float32: |err| <= (n + 2) U sum|w x|.
        xd = x.astype(np.float64)
        return xd @ parts["w"].T, (cols + 2) * U * (np.abs(xd) @ np.abs(parts["w"]).T)
    q, da, _ = act_q8(x)
    xq = q.reshape(-1, cols // QK, QK) * da.reshape(-1, cols // QK, 1).astype(np.float64)
    return xq.reshape(-1, cols) @ parts["w"].T, quant_bound(parts, x)


def assert_within(got: np.ndarray, exact: np.ndarray, bound: np.ndarray, what: str) -> None:
    err = np.abs(got.astype(np.float64) - exact)
    bad = np.argwhere(err > bound)
    assert bad.size == 0, (
        f"{what}: {len(bad)} values off, first at {tuple(bad[0])}: got {got[tuple(bad[0])]!r}, "
        f"expected {exact[tuple(bad[0])]!r} +- {bound[tuple(bad[0])]!r}"
    )


def random_case(dtype: int, rows: int, cols: int, nt: int, seed: int):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    x = rng.standard_normal((nt, cols)) * rng.choice([0.01, 1.0, 30.0], (nt, 1))
    return encode_weights(dtype, w), x.astype(np.float32)


# ----------------------------------------------------------------------------- quantize_act_q8


_ELEM = st.one_of(
    st.floats(width=32),  # every class: normal, subnormal, +-0, +-inf, NaN, +-FLT_MAX
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, 2.5, -3.5, 1e-30, 1e-40, 3e38, -3.4e38]),
    st.floats(-10, 10, width=32),
)


def _assert_act_equal(got, want):
    q, d, s = got
    eq, ed, es = want
    np.testing.assert_array_equal(q, eq)
    np.testing.assert_array_equal(np.isnan(d), np.isnan(ed))
    ok = ~np.isnan(ed)  # elsewhere bit exact (d >= 0, so no signed-zero ambiguity)
    np.testing.assert_array_equal(d[ok].view(np.uint32), ed[ok].view(np.uint32))
    np.testing.assert_array_equal(s.view(np.uint32), es.view(np.uint32))


@pytest.mark.parametrize("simd", SIMD_MODES)
@FAST
@given(x=hnp.arrays(np.float32, st.sampled_from([32, 64, 160]), elements=_ELEM))
def test_quantize_act_matches_mirror(simd, x):
    _assert_act_equal(K.quantize_act_q8(x, simd), act_q8(x))


def test_act_min_amax_constant():
    assert np.isfinite(np.float32(127) / ACT_MIN_AMAX)  # the multiply path never sees inf
    assert np.float32(1e-36) > ACT_MIN_AMAX  # and only tiny blocks take the division path


@pytest.mark.parametrize("simd", SIMD_MODES)
def test_quantize_act_edges(simd):
    x = np.zeros(8 * QK, np.float32)
    x[QK : 2 * QK] = np.arange(QK) - 15.5  # an ordinary block (amax 15.5)
    x[2 * QK] = 127.0  # amax 127 -> inv = 1 exactly, so ties below are genuine .5 ties
    x[2 * QK + 1 : 2 * QK + 7] = [0.5, 1.5, 2.5, -0.5, -1.5, -2.5]
    x[3 * QK : 4 * QK] = np.tile([-3e38, 3e38], QK // 2)  # huge but finite, sum(q) = 0
    x[4 * QK + 3] = ACT_MIN_AMAX  # smallest amax on the multiply path: q = 127
    x[5 * QK + 3], x[5 * QK + 4] = 1e-38, -4e-39  # tiny block: division path
    x[6 * QK + 1], x[6 * QK + 2] = np.inf, 1.0  # non-finite block: d = NaN, q = 0, s = 0
    x[7 * QK + 9] = np.nan
    q, d, s = K.quantize_act_q8(x, simd)
    np.testing.assert_array_equal(q[:QK], 0)  # zero block -> d = 0, q = 0, s = 0
    assert d[0] == 0 and s[0] == 0
    np.testing.assert_array_equal(q[2 * QK : 2 * QK + 7], [127, 0, 2, 2, 0, -2, -2])  # half-even
    np.testing.assert_array_equal(q[3 * QK : 4 * QK], np.tile([-127, 127], QK // 2))
    assert q[4 * QK + 3] == 127 and q[5 * QK + 3] == 127 and q[5 * QK + 4] == -51
    np.testing.assert_array_equal(np.isnan(d), [0, 0, 0, 0, 0, 0, 1, 1])
    np.testing.assert_array_equal(q[6 * QK :], 0)
    assert np.all(s[6:] == 0) and np.isfinite(s).all()
    _assert_act_equal((q, d, s), act_q8(x))


@pytest.mark.parametrize("simd", SIMD_MODES)
@pytest.mark.parametrize("m", [1, 63, 189, 300])
def test_quantize_act_subnormal_scale(simd, m):
    """Blocks with amax = m * 2**-149, whose d = fl(amax / 127) is a rounded (or zero) subnormal.

    m = 1, 63: d rounds to 0, so the block must be zeroed (no division by zero). m = 189: d
    rounds down to 2**-149, so rint(x / d) = 189 must be clamped to 127 (it used to wrap to -67
    in int8); m = 300: 150 -> 127. q must be a valid code with the sign of x, s = d * sum(q),
    and either the block is zeroed or q * d is x to d / 2 or the clamp.
    """
    x = np.zeros(QK, np.float32)
    x[0] = np.float32(m) * np.float32(2.0**-149)
    x[1] = -x[0]
    q, d, s = K.quantize_act_q8(x, simd)
    qi = q.astype(np.int32)
    assert np.all(np.abs(qi) <= 127) and qi[0] >= 0 and qi[1] <= 0, (q[:2], d)
    assert s[0] == np.float32(d[0] * np.float32(qi.sum()))
    if d[0] == 0:
        assert np.all(q == 0)
    else:
        err = np.abs(qi * np.float64(d[0]) - x)
        assert np.all((err <= np.float64(d[0]) / 2) | (np.abs(qi) == 127)), (q[:2], d)


def test_quantized_matvec_propagates_non_finite_activations():
    raw, x = random_case(Q4_1, 3, 64, 2, seed=5)
    x[0, 40] = np.inf
    x[1, 3] = np.nan
    for simd in SIMD_MODES:
        assert np.isnan(K.matvec(Q4_1, raw, 3, 64, x, simd)).all()
    assert np.isnan(K.matmul(Q4_1, raw, 3, 64, x, 2)).all()


# ----------------------------------------------------------------------------- matvec / matmul

FLOAT_SHAPES = [(1, 1), (3, 7), (1, 33), (5, 100), (2, 8192), (1001, 40)]
QUANT_SHAPES = [(1, 32), (3, 32), (7, 96), (2, 8192), (1001, 64)]
CASES = [(t, r, c) for t in FLOATS for r, c in FLOAT_SHAPES] + [
    (t, r, c) for t in QUANTS for r, c in QUANT_SHAPES
]


def _id(case):
    return f"{GT(case[0]).name}-{case[1]}x{case[2]}"


@pytest.mark.parametrize("case", CASES, ids=_id)
@pytest.mark.parametrize("nt", [1, 3])
def test_matvec_random_vs_numpy(case, nt):
    dtype, rows, cols = case
    raw, x = random_case(dtype, rows, cols, nt, seed=rows * 7 + cols + nt)
    exact, bound = reference(dtype, raw, rows, cols, x)
    outs = {}
    for simd in SIMD_MODES:
        outs[simd] = K.matvec(dtype, raw, rows, cols, x, simd)
        assert outs[simd].shape == (nt, rows) and outs[simd].dtype == np.float32
        assert_within(outs[simd], exact, bound, f"matvec simd={simd}")
    # Both within `bound` of the exact value, so within 2 * bound of each other.
    assert_within(outs[True], outs[False].astype(np.float64), 2 * bound, "simd vs scalar")


@pytest.mark.parametrize("dtype", FLOATS + QUANTS, ids=lambda t: GT(t).name)
@pytest.mark.parametrize("cols", [32, 96, 8192])
def test_matvec_integer_data_is_exact(dtype, cols):
    """Integer data on which every float32 step is exact in any order: results must be exact.

    Float weights in [-8, 8] (exact in F16/BF16), x in [-8, 8]: |partial sums| <= 64 * 8192 <
    2**24. Quantized: weight scale d = 1 (Q4_1 min m = -8), and each activation block holds
    +-127 so d_a = 1, inv = 1 and q = x; block sums <= 8 * 127 * 32, total < 2**24.
    """
    rng = np.random.default_rng(cols + dtype)
    rows, nt = 5, 5  # 5 tokens: the 4-token prefill path and the single-token path
    nb = cols // QK
    if dtype in FLOATS:
        raw = encode_weights(dtype, rng.integers(-8, 9, (rows, cols)).astype(np.float32))
        x = rng.integers(-8, 9, (nt, cols)).astype(np.float32)
    else:
        lo, hi = (-8, 9) if dtype == Q8_0 else (0, 16)
        codes = rng.integers(lo, hi, (rows, nb, QK))
        raw = pack_blocks(dtype, np.ones((rows, nb)), codes, np.full((rows, nb), -8.0))
        x = rng.integers(-127, 128, (nt, nb, QK)).astype(np.float32)
        x[:, :, 5] = rng.choice([-127.0, 127.0], (nt, nb))
        x = x.reshape(nt, cols)
    exact = x.astype(np.float64) @ decode(dtype, raw, rows, cols)["w"].T
    for simd in SIMD_MODES:
        np.testing.assert_array_equal(K.matvec(dtype, raw, rows, cols, x, simd), exact)
    for threads in (1, 3):
        np.testing.assert_array_equal(K.matmul(dtype, raw, rows, cols, x, threads), exact)


@pytest.mark.parametrize(
    "case", [c for c in CASES if c[2] != 8192] + [(Q4_0, 3, 8192), (F16, 2, 8192)], ids=_id
)
@pytest.mark.parametrize("nt", [1, 9])  # 9 >= 8 tokens: activations quantized in parallel
def test_matmul_threads_vs_numpy(case, nt):
    dtype, rows, cols = case
    raw, x = random_case(dtype, rows, cols, nt, seed=rows + cols * 3 + nt)
    exact, bound = reference(dtype, raw, rows, cols, x)
    first = None
    for threads in (1, 2, 3):
        got = K.matmul(dtype, raw, rows, cols, x, threads)
        assert got.shape == (nt, rows)
        assert_within(got, exact, bound, f"matmul threads={threads}")
        # Work splits by output rows, so the thread count must not change any bit.
        if first is None:
            first = got
        np.testing.assert_array_equal(got, first)


@FAST
@given(
    dtype=st.sampled_from(FLOATS + QUANTS),
    rows=st.integers(1, 9),
    nb=st.integers(1, 5),
    nt=st.integers(1, 3),
    seed=st.integers(0, 2**32 - 1),
    scale=st.sampled_from([1e-6, 1.0, 1e4]),
)
def test_matvec_property(dtype, rows, nb, nt, seed, scale):
    cols = nb * QK if dtype in QUANTS else nb * 7 + seed % 5
    raw, x = random_case(dtype, rows, cols, nt, seed)
    x = (x * np.float32(scale)).astype(np.float32)
    exact, bound = reference(dtype, raw, rows, cols, x)
    for simd in SIMD_MODES:
        assert_within(K.matvec(dtype, raw, rows, cols, x, simd), exact, bound, f"simd={simd}")


# ----------------------------------------------------------------------------- dequantize


@pytest.mark.parametrize("dtype", FLOATS + QUANTS, ids=lambda t: GT(t).name)
@pytest.mark.parametrize("source", ["quantized", "random_bytes"])
def test_dequantize_bit_exact(dtype, source):
    rows, cols = 7, 96
    rng = np.random.default_rng(dtype)
    if source == "quantized":
        raw = encode_weights(dtype, rng.standard_normal((rows, cols)).astype(np.float32) * 3)
    else:  # arbitrary bit patterns: subnormal/huge scales and mins, every code
        raw = rng.integers(0, 256, len(encode_weights(dtype, np.zeros((rows, cols)))), np.uint8)
        half = raw.view(np.uint16)
        if dtype == F32:
            half[1::2][(half[1::2] & 0x7F80) == 0x7F80] &= 0xBFFF  # high halves
        elif dtype == F16:
            half[(half & 0x7C00) == 0x7C00] &= 0xBFFF  # inf/NaN out: NaN payloads aren't "values"
        elif dtype == BF16:
            half[(half & 0x7F80) == 0x7F80] &= 0xBFFF
        else:
            blk = raw.reshape(rows, -1, BLOCK_BYTES[dtype])
            nsc = 4 if dtype == Q4_1 else 2  # bytes of f16 scale (and min)
            sc = blk[..., :nsc].copy().view(np.uint16)
            sc[(sc & 0x7C00) == 0x7C00] &= 0xBFFF
            blk[..., :nsc] = sc.view(np.uint8)
    got = K.dequantize(dtype, raw, rows, cols)
    want = gg_dequantize(raw.reshape(rows, -1) if dtype not in FLOATS else raw, GT(dtype))
    want = np.asarray(want, np.float32).reshape(rows, cols)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    # Own decoder too: its float64 value is exact, and float32 output rounds it once (Q4_1's
    # d * nib is exact in float32, so d * nib + m is one rounding of the exact value).
    np.testing.assert_array_equal(got, decode(dtype, raw, rows, cols)["w"].astype(np.float32))


# ----------------------------------------------------------------------------- f32 -> f16


def _check_f16(x: np.ndarray) -> None:
    x = np.asarray(x, np.float32)
    got = K.f32_to_f16_bits(x)
    with np.errstate(over="ignore"):
        want = x.astype(np.float16).view(np.uint16)
    nan = np.isnan(x)
    np.testing.assert_array_equal(got[~nan], want[~nan])
    g = got[nan]
    assert np.all(((g & 0x7C00) == 0x7C00) & ((g & 0x03FF) != 0)), "NaN must stay a NaN"
    np.testing.assert_array_equal(g & 0x8000, (x[nan].view(np.uint32) >> 16) & 0x8000)


@FAST
@given(hnp.arrays(np.float32, st.integers(1, 64), elements=st.floats(width=32)))
def test_f32_to_f16_hypothesis(x):
    _check_f16(x)


def test_f32_to_f16_every_boundary():
    """Every half value, every midpoint between neighbours (exact ties), and +-1 float32 ulp."""
    h = np.arange(0x7C01, dtype=np.uint16)  # +0 .. +inf
    v = h.view(np.float16).astype(np.float32)
    mid = ((v[:-1].astype(np.float64) + v[1:]) / 2).astype(np.float32)  # exact in float32
    pts = np.concatenate([v, mid, np.nextafter(mid, 0), np.nextafter(mid, np.inf)])
    pts = np.concatenate([pts, -pts, [np.nan, -np.nan, 1e-45, 3e38, np.float32(65520.0)]])
    _check_f16(pts)
    bits = np.random.default_rng(2).integers(0, 2**32, 1 << 18, dtype=np.uint64).astype(np.uint32)
    _check_f16(bits.view(np.float32))  # random bit patterns: every exponent, NaN payloads


# ----------------------------------------------------------------------------- rms_norm


@pytest.mark.parametrize("rows", [1, 3, 300])
@pytest.mark.parametrize("n", [1, 7, 576])
@pytest.mark.parametrize("threads", [1, 3])
def test_rms_norm_vs_numpy(rows, n, threads):
    rng = np.random.default_rng(rows * n + threads)
    # Row scales cycle 1e-3 (mean square ~1e-6 < eps: eps matters), 1, 1e3.
    x = (rng.standard_normal((rows, n)) * np.resize([1e-3, 1.0, 1e3], (rows, 1))).astype(np.float32)
    x[0, 0] = 0.0
    if rows > 2:
        x[2] = 0.0  # an all-zero row: output exactly 0
    w = (rng.standard_normal(n) + 1).astype(np.float32)
    eps = 1e-5
    got = K.rms_norm(x, w, eps, threads)
    xd = x.astype(np.float64)
    r = 1 / np.sqrt(np.mean(xd * xd, axis=1, keepdims=True) + np.float64(np.float32(eps)))
    exact = xd * r * w.astype(np.float64)
    # sum of n positive squares: relative error <= n U; the sqrt halves it; ss/n, +eps, sqrt,
    # 1/., x*r, *w add <= 6 roundings: |err| <= (n/2 + 8) U |exact|.
    assert_within(got, exact, (n / 2 + 8) * U * np.abs(exact), "rms_norm")
    np.testing.assert_array_equal(got == 0, exact == 0)


# ----------------------------------------------------------------------------- error paths


def _raises(cls, tag, fn, *args):
    with pytest.raises(cls) as ei:
        fn(*args)
    assert str(ei.value).startswith(tag), str(ei.value)
    return str(ei.value)


@pytest.mark.parametrize("fn", ["matvec", "matmul"])
def test_matmul_errors(fn):
    f = getattr(K, fn)
    tag = f"[kernels.{fn}]"
    raw, x = random_case(Q8_0, 2, 64, 1, seed=0)
    _raises(errors.ShapeMismatch, tag, f, Q8_0, raw[:-1], 2, 64, x)  # one byte short
    _raises(errors.ShapeMismatch, tag, f, Q8_0, raw, 3, 64, x)  # rows disagree with bytes
    _raises(errors.ShapeMismatch, tag, f, Q8_0, raw, 2, 48, x[:, :48])  # cols % 32 != 0
    _raises(errors.ShapeMismatch, tag, f, Q8_0, raw, 0, 64, x)  # no rows
    _raises(errors.ShapeMismatch, tag, f, Q8_0, raw, 2, 64, x[:, :63])  # x not a multiple
    _raises(errors.ShapeMismatch, tag, f, F32, np.zeros(0, np.uint8), 1, 0, x)  # cols == 0
    for bad in (4, 10, 11, 99, -1):  # Q4_2 (removed), Q2_K, Q3_K: valid GGML ids, no kernels
        msg = _raises(errors.UnsupportedDType, "[dtype]", f, bad, raw, 2, 64, x)
        assert f"kernels.{fn}" in msg and str(bad) in msg


def test_other_kernel_errors():
    raw, _ = random_case(Q4_1, 2, 64, 1, seed=0)
    deq, one = "[kernels.dequantize]", np.ones(7, np.float32)
    _raises(errors.ShapeMismatch, deq, K.dequantize, Q4_1, raw[:-2], 2, 64)
    _raises(errors.ShapeMismatch, deq, K.dequantize, Q4_1, raw, 2, 40)
    _raises(errors.UnsupportedDType, "[dtype]", K.dequantize, 10, raw, 2, 64)
    msg = _raises(errors.ShapeMismatch, "[kernels.quantize_act_q8]", K.quantize_act_q8, one)
    assert "7" in msg
    _raises(errors.ShapeMismatch, "[kernels.rms_norm]", K.rms_norm, one, one[:2], 1e-5, 1)
    _raises(errors.ShapeMismatch, "[kernels.rms_norm]", K.rms_norm, one, one[:0], 1e-5, 1)
