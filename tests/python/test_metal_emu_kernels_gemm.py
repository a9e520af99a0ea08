"""Prefill GEMM (shaders/gemm.h, simdgroup_matrix tiles) run by the Metal emulator against a
float64 NumPy reference of the dequantized weights, and against the decode GEMV.

Tolerances (as in test_metal_emu_kernels.py): ``U = 2**-24`` is the float32 unit roundoff; the
float64 reference of the dequantized weights stands for the exact result. The kernel stages the
dequantized weights and the activations as float (float threadgroup memory, no half rounding)
and accumulates float 8x8 tiles, so every output is a float32 sum of ``cols`` products in some
order, each product and each addition rounded at most once (fused or not): within
``2 * cols * U * sum(|x * w|)`` of the exact dot product. The dequantization is exact except
Q4_1's ``d * q + m`` (one rounding, ``U * |w|``: one more ``U * sum(|x * w|)``); with the
second-order terms that is ``2 * (cols + 4) * U * sum(|x * w|)``. The epilogue's bias and
residual additions add one rounding each, within ``4 * U * (|ref| + |acc| + |bias|)``.
Every case also runs with the lanes of each threadgroup scheduled in reverse order and must give
bit-identical output (threadgroup memory is poisoned with NaN, so a missing barrier shows). One
exception: the scheduler runs every lane to its next rendezvous before any simdgroup moves on,
so a barrier missing between the staging stores and the first simdgroup_load is invisible
in-process; the ThreadSanitizer replay of these dispatches (test_metal_emu_broken.py, slow)
reports it as a data race.
"""

from __future__ import annotations

import numpy as np
import pytest

from emu_harness import (
    CONST,
    GemvArgs,
    _args,
    pack,
    run_both_orders,
    weights,
)

U = 2.0**-24
FORMATS = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1"]
BLOCK = {"f32": 1, "f16": 1, "bf16": 1, "q8_0": 32, "q4_0": 32, "q4_1": 32}

# shaders/args.h GemmArgs, field for field.
GemmArgs = _args(
    "GemmArgs",
    [(f, "u") for f in ("rows", "cols", "row_bytes", "x_stride", "out_stride", "n_tokens")]
    + [("accumulate", "u"), ("has_bias", "u")],
)


def gemm_grid(rows: int, tokens: int):
    groups = (-(-rows // CONST["kGemmTileRows"]), -(-tokens // CONST["kGemmTileTokens"]))
    return groups, (CONST["kGemmSimdgroups"] * 32,)


def run_gemm(emu, dtype, raw, x, bias, out, rows, cols, tokens, accumulate, has_bias):
    """x: (tokens, x_stride), out: (tokens, out_stride); returns out after the dispatch."""
    args = pack(GemmArgs, rows=rows, cols=cols, row_bytes=raw.shape[1], n_tokens=tokens)
    args["x_stride"], args["out_stride"] = x.shape[1], out.shape[1]
    args["accumulate"], args["has_bias"] = accumulate, has_bias
    groups, threads = gemm_grid(rows, tokens)
    bufs = {0: raw, 1: x, 2: bias, 3: out, 4: args}
    (got,) = run_both_orders(emu, f"gemm_{dtype}", groups, threads, bufs, [3])
    return got


def tolerance(cols, x, w, ref, acc0, bias):
    """The bound of the module docstring for every output (tokens, rows)."""
    terms = np.abs(x) @ np.abs(w).T  # sum of |x * w| per output
    return 2 * (cols + 4) * U * terms + 4 * U * (np.abs(ref) + np.abs(acc0) + np.abs(bias))


# (tokens, rows, cols): 1, odd, not a multiple of a tile, more than one tile of tokens (32) /
# rows (64) / K (32 columns). cols "Nb" is N blocks of the format (1 column for the float
# formats, 32 for the block quants); 576 is SmolLM2's width.
SHAPES = [
    (1, 1, "1b"),
    (2, 5, "3b"),
    (7, 65, 576),
    (33, 64, "2b"),
    (70, 130, 160),
]


def cols_of(dtype: str, cols) -> int:
    return cols if isinstance(cols, int) else BLOCK[dtype] * int(cols[:-1])


@pytest.mark.parametrize("dtype", FORMATS)
@pytest.mark.parametrize(("tokens", "rows", "cols"), SHAPES)
def test_gemm(emu, dtype, tokens, rows, cols):
    cols = cols_of(dtype, cols)
    rng = np.random.default_rng(tokens * 1000 + rows * 10 + cols)
    raw, w = weights(rng, rows, cols, dtype)
    # Strided x and out with NaN / sentinel padding: a read of x's padding poisons the result,
    # a write to out's padding is caught below.
    x = np.full((tokens, cols + 3), np.nan, np.float32)
    x[:, :cols] = rng.standard_normal((tokens, cols))
    bias = rng.standard_normal(rows).astype(np.float32)
    acc0 = np.full((tokens, rows + 2), 7.0, np.float32)
    acc0[:, :rows] = rng.standard_normal((tokens, rows))
    xs = x[:, :cols].astype(np.float64)
    for accumulate, has_bias in [(0, 0), (1, 1)] if tokens > 7 else [(0, 1), (1, 0)]:
        got = run_gemm(
            emu, dtype, raw, x, bias, acc0.copy(), rows, cols, tokens, accumulate, has_bias
        )
        ref = xs @ w.T + (acc0[:, :rows] if accumulate else 0.0) + (bias if has_bias else 0.0)
        tol = tolerance(cols, xs, w, ref, acc0[:, :rows], bias)
        err = np.abs(got[:, :rows] - ref)
        assert np.all(err <= tol), f"gemm_{dtype} max err {err.max()} (bound {tol.max()})"
        assert np.all(got[:, rows:] == 7.0), "gemm wrote past rows (out padding)"


@pytest.mark.parametrize("dtype", FORMATS)
def test_gemm_matches_gemv(emu, dtype):
    """Same inputs through the decode GEMV: both are within the bound of the exact result, so
    they differ by at most twice it."""
    tokens, rows, cols = 9, 67, 75 if BLOCK[dtype] == 1 else 96
    rng = np.random.default_rng(11)
    raw, w = weights(rng, rows, cols, dtype)
    x = rng.standard_normal((tokens, cols)).astype(np.float32)
    bias = rng.standard_normal(rows).astype(np.float32)
    acc0 = rng.standard_normal((tokens, rows)).astype(np.float32)
    got = run_gemm(emu, dtype, raw, x, bias, acc0.copy(), rows, cols, tokens, 1, 1)
    gv = acc0.copy()
    args = pack(
        GemvArgs, rows=rows, cols=cols, row_bytes=raw.shape[1], x_stride=cols, out_stride=rows
    )
    args["accumulate"], args["has_bias"] = 1, 1
    groups = (-(-rows // CONST["kGemvRowsPerGroup"]), tokens)
    emu.dispatch(
        f"gemv_{dtype}",
        groups,
        (CONST["kGemvSimdgroups"] * 32,),
        {0: raw, 1: x, 2: bias, 3: gv, 4: args},
    )
    xs = x.astype(np.float64)
    ref = xs @ w.T + acc0 + bias
    tol = tolerance(cols, xs, w, ref, acc0, bias)
    assert np.all(np.abs(got - gv) <= 2 * tol), f"gemm vs gemv max diff {np.abs(got - gv).max()}"


def test_gemm_exact_on_integers(emu):
    """Small-integer weights and activations: every float32 operation is exact, so the result is
    bit-exact and a wrong token, row or column index cannot hide inside a rounding bound. Three
    tiles of rows, three of tokens, two K chunks plus a partial one."""
    rng = np.random.default_rng(5)
    tokens, rows, cols = 70, 130, 75
    w = rng.integers(-8, 8, (rows, cols)).astype(np.float16)
    x = rng.integers(-8, 8, (tokens, cols)).astype(np.float32)
    bias = rng.integers(-8, 8, rows).astype(np.float32)
    out = np.zeros((tokens, rows), np.float32)
    got = run_gemm(emu, "f16", w.view(np.uint8), x, bias, out, rows, cols, tokens, 0, 1)
    np.testing.assert_array_equal(got, x @ w.astype(np.float32).T + bias)
