"""The CPU device's load-time repack into 8-row interleaved blocks (native/cpu/repack.{h,cpp},
cpu/arch/x86_x8.cpp): matmul and embedding lookups on repacked weights against numpy, with the
rounding bounds of test_kernels.py; the row-major path is the second opinion."""

from __future__ import annotations

import numpy as np
import pytest
from test_kernels import (
    Q4_0,
    Q4_1,
    Q8_0,
    QK,
    U,
    act_q8,
    assert_within,
    decode,
    random_case,
    reference,
)

from metallic import _core

K = _core.kernels
QUANTS = [Q8_0, Q4_0, Q4_1]
# rows: one group, a group + tail, many groups, a large odd count; cols: one block, three, 576.
SHAPES = [(8, 32), (13, 96), (64, 576), (1001, 64)]
TOKENS = [1, 2, 3, 5, 6, 7, 9, 17]  # 8-token tiles, then one tile of the 1..7 left


def repacked_bound(dtype: int, raw: np.ndarray, rows: int, cols: int, x: np.ndarray):
    """Rounding bound of the interleaved kernels. Q4_0 / Q4_1 split each block term as the
    row-major kernels do; Q8_0 with VNNI stores q + 128 and subtracts 128 * d_w * s_a, so its
    terms are |d_w d_a| sum |(q + 128) q_a| + 128 |d_w| |s_a| (the same (nb + 8) U A argument).
    Without VNNI it stores q itself (repack.h kQ8x8Bias = 0): the row-major bound, which this
    one contains."""
    exact, bound = reference(dtype, raw, rows, cols, x)
    if dtype != Q8_0:
        return exact, bound
    parts = decode(dtype, raw, rows, cols)
    q, da, _ = act_q8(x)
    nb = cols // QK
    q = q.reshape(-1, nb, QK).astype(np.float64)
    da = da.reshape(-1, nb).astype(np.float64)
    int_abs = np.einsum("rbi,tbi->trb", np.abs(parts["u"] + 128), np.abs(q))
    a = np.abs(parts["d"])[None] * np.abs(da)[:, None] * int_abs
    a += 128 * np.abs(parts["d"])[None] * np.abs(da[:, None] * q.sum(-1)[:, None])
    return exact, (nb + 8) * U * a.sum(-1)


@pytest.mark.skipif(not K.simd_available(), reason="repacking needs the AVX2 kernels")
@pytest.mark.parametrize("dtype", QUANTS)
@pytest.mark.parametrize("rows, cols", SHAPES)
@pytest.mark.parametrize("nt", TOKENS)
def test_repacked_matmul_vs_numpy(dtype, rows, cols, nt):
    raw, x = random_case(dtype, rows, cols, nt, seed=rows * 7 + nt)
    exact, bound = repacked_bound(dtype, raw, rows, cols, x)
    got = K.matmul(dtype, raw, rows, cols, x, 2, repack=True)
    assert_within(got, exact, bound, f"repacked dtype {dtype} {rows}x{cols} nt={nt}")
    plain = K.matmul(dtype, raw, rows, cols, x, 2)
    assert_within(got, plain.astype(np.float64), 2 * bound + 1e-30, "repacked vs row-major")
    # batch invariance: each token's row is bit-identical to its own single-token pass
    single = [K.matmul(dtype, raw, rows, cols, x[i : i + 1], 2, repack=True)[0] for i in range(nt)]
    np.testing.assert_array_equal(got, np.stack(single))


@pytest.mark.skipif(not K.simd_available(), reason="repacking needs the AVX2 kernels")
@pytest.mark.parametrize("dtype", QUANTS)
@pytest.mark.parametrize("threads", [1, 3])
def test_repacked_bias_and_accumulate(dtype, threads):
    rows, cols, nt = 21, 64, 6
    raw, x = random_case(dtype, rows, cols, nt, seed=11)
    rng = np.random.default_rng(3)
    bias = rng.standard_normal(rows).astype(np.float32)
    init = rng.standard_normal((nt, rows)).astype(np.float32)
    exact, bound = repacked_bound(dtype, raw, rows, cols, x)
    got = K.matmul(dtype, raw, rows, cols, x, threads, repack=True, bias=bias, accumulate_into=init)
    # two more float32 additions per value (bias, accumulator): 2 U |value| on top of the dot bound
    want = exact + bias + init
    assert_within(
        got, want, bound + 2 * U * (np.abs(want) + np.abs(init) + np.abs(bias)) + 1e-30, "bias+acc"
    )


@pytest.mark.parametrize("dtype", QUANTS)
@pytest.mark.parametrize("rows", [8, 13, 1001])
def test_embedding_rows_from_repacked_table_are_exact(dtype, rows):
    cols = 96
    raw, _ = random_case(dtype, rows, cols, 1, seed=rows)
    ids = np.array([0, rows - 1, rows // 2, min(7, rows - 1), rows - 1 - rows % 8], np.int32)
    want = K.dequantize(dtype, raw, rows, cols)[ids]
    np.testing.assert_array_equal(K.embed(dtype, raw, rows, cols, ids, repack=True), want)
    np.testing.assert_array_equal(K.embed(dtype, raw, rows, cols, ids, repack=False), want)
