"""The fused RMSNorm + GEMV kernels (shaders/gemv_fused.h), run by the Metal emulator, against the
NumPy reference: ``gemv_norm_*`` (norm + up to three projections sharing the normed row, + bias)
and ``gemv_norm_swiglu_*`` (norm + gate/up projections + SwiGLU).

Tolerances, derived as in test_metal_emu_kernels.py (U = 2**-24, float64 stands for exact): the
normed row carries the rms_norm kernel's relative error ``(cols + 8) U`` per element; a dot of
``cols`` products adds ``2 (cols + 4) U`` of the term magnitudes ``sum |w| |xn|``; bias and the
block scale a few U of the result. So ``(3 cols + 16) U * terms + 4 U (|ref| + |bias|)``. SwiGLU:
``out = silu(g) u`` with ``|silu'| <= 1.1``, so ``1.1 |u| e_g + |silu(g)| e_u + e_g e_u`` plus
``8 U |out|`` for exp, the division and the products. Each case runs with lanes in both orders
and must be bit-identical.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_metal_emu_kernels import GEMV_TYPES, U

import reference
from emu_harness import (
    CONST,
    ROOT,
    _args,
    pack,
    run_both_orders,
    weights,
)

GemvNormArgs = _args(
    "GemvNormArgs",
    [(f, "u") for f in ("rows0", "rows1", "rows2", "cols", "row_bytes0", "row_bytes1")]
    + [(f, "u") for f in ("row_bytes2", "x_stride", "out_stride0", "out_stride1", "out_stride2")]
    + [("has_bias", "u"), ("eps", "f"), ("pad0", "u"), ("pad1", "u"), ("pad2", "u")],
)
GemvSwiGluArgs = _args(
    "GemvSwiGluArgs",
    [(f, "u") for f in ("rows", "cols", "row_bytes_gate", "row_bytes_up", "x_stride")]
    + [("out_stride", "u"), ("eps", "f"), ("gelu", "u")],
)
EPS = 1e-5


THREADS = (CONST["kFusedSimdgroups"] * 32,)


def test_arg_struct_sizes_match_args_h():
    text = (ROOT / "shaders" / "args.h").read_text()
    assert "sizeof(GemvNormArgs) == 64" in text and GemvNormArgs.itemsize == 64
    assert "sizeof(GemvSwiGluArgs) == 32" in text and GemvSwiGluArgs.itemsize == 32


def _normed(x: np.ndarray, nw: np.ndarray) -> np.ndarray:
    return reference.rms_norm(x.astype(np.float64), nw.astype(np.float64), EPS)


def _dot_tol(cols, w, xn, ref, bias=0.0):
    terms = np.abs(xn) @ np.abs(w).T
    return (3 * cols + 16) * U * terms + 4 * U * (np.abs(ref) + np.abs(bias))


@pytest.mark.parametrize("dtype", GEMV_TYPES)
@pytest.mark.parametrize(
    ("rows", "cols"),
    [((1,), 32), ((3, 1), 64), ((5, 7, 2), 96), ((64, 16, 16), 576), ((33, 9, 9), 160)],
)
@pytest.mark.parametrize("tokens", [1, 3])
def test_gemv_norm(emu, dtype, rows, cols, tokens):
    rng = np.random.default_rng(sum(rows) * 100 + cols + tokens)
    x = (rng.standard_normal((tokens, cols)) * 2).astype(np.float32)
    nw = (1 + 0.3 * rng.standard_normal(cols)).astype(np.float32)
    xn = _normed(x, nw)
    ws = [weights(rng, r, cols, dtype) for r in rows]
    biases = [rng.standard_normal(r).astype(np.float32) for r in rows]
    dummy = np.zeros(1, np.float32)
    for with_bias in (False, True):
        outs = [np.full((tokens, r), np.nan, np.float32) for r in rows]
        bufs = {3: x, 4: nw}
        args = pack(GemvNormArgs, cols=cols, x_stride=cols, eps=EPS)
        for i in range(3):
            if i < len(rows):
                bufs[i], bufs[5 + i], bufs[8 + i] = ws[i][0], biases[i], outs[i]
                args[f"rows{i}"], args[f"row_bytes{i}"] = rows[i], ws[i][0].shape[1]
                args[f"out_stride{i}"] = rows[i]
            else:
                bufs[i], bufs[5 + i], bufs[8 + i] = dummy, dummy, dummy.copy()
        args["has_bias"] = (1 << len(rows)) - 1 if with_bias else 0
        bufs[11] = args
        groups = (-(-sum(rows) // CONST["kFusedRowsPerGroup"]), tokens)
        got = run_both_orders(
            emu, f"gemv_norm_{dtype}", groups, THREADS, bufs, [8, 9, 10][: len(rows)]
        )
        for i, (_, w) in enumerate(ws):
            b = biases[i].astype(np.float64) if with_bias else 0.0
            ref = xn @ w.T + b
            tol = _dot_tol(cols, w, xn, ref, b)
            err = np.abs(got[i] - ref)
            assert np.all(err <= tol), f"gemv_norm_{dtype} weight {i}: max err {err.max()}"


@pytest.mark.parametrize("dtype", GEMV_TYPES)
@pytest.mark.parametrize("gelu", [0, 1])
@pytest.mark.parametrize(("rows", "cols"), [(1, 32), (17, 64), (40, 96), (96, 576)])
@pytest.mark.parametrize("tokens", [1, 2])
def test_gemv_norm_swiglu(emu, dtype, rows, cols, tokens, gelu):
    rng = np.random.default_rng(rows * 10 + cols + tokens)
    x = (rng.standard_normal((tokens, cols)) * 2).astype(np.float32)
    nw = (1 + 0.3 * rng.standard_normal(cols)).astype(np.float32)
    xn = _normed(x, nw)
    (raw_g, wg), (raw_u, wu) = weights(rng, rows, cols, dtype), weights(rng, rows, cols, dtype)
    out = np.full((tokens, rows), np.nan, np.float32)
    args = pack(
        GemvSwiGluArgs, rows=rows, cols=cols, row_bytes_gate=raw_g.shape[1],
        row_bytes_up=raw_u.shape[1], x_stride=cols, out_stride=rows, eps=EPS, gelu=gelu,
    )  # fmt: skip
    groups = (-(-rows // CONST["kFusedRowsPerGroup"]), tokens)
    bufs = {0: raw_g, 1: raw_u, 2: x, 3: nw, 4: out, 5: args}
    (got,) = run_both_orders(emu, f"gemv_norm_swiglu_{dtype}", groups, THREADS, bufs, [4])
    g, u = xn @ wg.T, xn @ wu.T
    # gelu = 1: GELU-tanh (|gelu'| <= 1.13, the same derivative bound as SiLU's 1.1 rounded up),
    # and 16 U of the result plus 8 U of |g u| for the tanh chain (see test_swiglu_gelu).
    act = (
        0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g**3)))
        if gelu
        else g / (1 + np.exp(-g))
    )
    ref = act * u
    eg, eu = _dot_tol(cols, wg, xn, g), _dot_tol(cols, wu, xn, u)
    chain = (16 * U * np.abs(ref) + 8 * U * np.abs(g * u)) if gelu else 8 * U * np.abs(ref)
    tol = 1.13 * np.abs(u) * eg + np.abs(act) * eu + eg * eu + chain
    err = np.abs(got - ref)
    assert np.all(err <= tol), f"gemv_norm_swiglu_{dtype}: max err {err.max()}"


def test_gemv_norm_widest_row(emu):
    """cols = kFusedNormMaxCols: the whole threadgroup row buffer is used (f16 weights)."""
    cols = CONST["kFusedNormMaxCols"]
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, cols)).astype(np.float32)
    nw = np.ones(cols, np.float32)
    raw, w = weights(rng, 5, cols, "f16")
    out, dummy = np.zeros((1, 5), np.float32), np.zeros(1, np.float32)
    args = pack(GemvNormArgs, rows0=5, cols=cols, row_bytes0=raw.shape[1], x_stride=cols, eps=EPS)
    args["out_stride0"] = 5
    bufs = {0: raw, 1: dummy, 2: dummy, 3: x, 4: nw, 5: dummy, 6: dummy, 7: dummy}
    bufs |= {8: out, 9: dummy.copy(), 10: dummy.copy(), 11: args}
    (got,) = run_both_orders(emu, "gemv_norm_f16", (1, 1), THREADS, bufs, [8])
    xn = _normed(x, nw)
    ref = xn @ w.T
    assert np.all(np.abs(got - ref) <= _dot_tol(cols, w, xn, ref))
