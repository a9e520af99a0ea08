"""Every shaders/*.metal kernel, run by the Metal emulator, against the NumPy reference.

Tolerances are derived as in test_kernels.py: ``U = 2**-24`` is the float32 unit roundoff and a
float32 sum of ``k`` terms in any order is within ``k * U * sum(|terms|)`` of the exact sum; the
float64 references stand for the exact result. Each kernel also runs with the lanes of every
threadgroup scheduled in reverse order and must give bit-identical output: a kernel whose result
depends on lane order has a missing barrier (threadgroup memory is poisoned with NaN).
"""

from __future__ import annotations

import numpy as np
import pytest

import reference
from emu_harness import (
    CONST,
    AttnArgs,
    EmbedArgs,
    GemvArgs,
    RmsNormArgs,
    SwiGluArgs,
    pack,
    rope_kv_args,
    run_both_orders,
    weights,
)

U = 2.0**-24
HALF_U = 2.0**-11  # float16 unit roundoff


def test_library_lists_every_family(emu):
    for k in (
        "rms_norm_f32",
        "rms_norm_f16",
        "gemv_q4_1",
        "rope_kv_f16",
        "attention_decode_f32",
        "swiglu_f32",
    ):
        assert k in emu.kernels
    assert {f"embed_{t}" for t in ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1")} <= set(
        emu.kernels
    )


# ----------------------------------------------------------------------------- rms_norm


@pytest.mark.parametrize("n", [1, 31, 33, 576, 4099])
@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_rms_norm(emu, n, dtype):
    rng = np.random.default_rng(n)
    rows = 3
    np_t = np.float32 if dtype == "f32" else np.float16
    x = (rng.standard_normal((rows, n)) * 3).astype(np_t)
    w = rng.standard_normal(n).astype(np.float32)
    out = np.zeros_like(x)
    args = pack(RmsNormArgs, n=n, x_stride=n, out_stride=n, eps=1e-5)
    threads = min(256, (n + 31) // 32 * 32)
    (got,) = run_both_orders(
        emu, f"rms_norm_{dtype}", (rows,), (threads,), {0: x, 1: w, 2: out, 3: args}, [2]
    )
    ref = reference.rms_norm(x.astype(np.float64), w.astype(np.float64), 1e-5)
    # float32: sum of n squares (n U relative), rsqrt and two products (~4 U); f16 adds the
    # final rounding to half (HALF_U relative).
    rel = (n + 8) * U + (HALF_U if dtype == "f16" else 0.0)
    np.testing.assert_allclose(got.astype(np.float64), ref, rtol=rel, atol=rel * np.abs(w).max())

    # accumulate = 1 (a post-norm's residual add): out += norm(x) * w, one more rounding of the
    # sum (U of |out|, or half of it for f16).
    base = rng.standard_normal((rows, n)).astype(np_t)
    want = base.astype(np.float64) + ref  # before the dispatch writes into base
    args = pack(RmsNormArgs, n=n, x_stride=n, out_stride=n, eps=1e-5, accumulate=1)
    (acc,) = run_both_orders(
        emu, f"rms_norm_{dtype}", (rows,), (threads,), {0: x, 1: w, 2: base, 3: args}, [2]
    )
    extra = (U if dtype == "f32" else HALF_U) * np.abs(want)
    assert np.all(np.abs(acc.astype(np.float64) - want) <= rel * np.abs(ref) + extra + rel)


# ----------------------------------------------------------------------------- gemv

GEMV_TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1"]


@pytest.mark.parametrize("dtype", GEMV_TYPES)
@pytest.mark.parametrize(("rows", "cols"), [(1, 32), (3, 64), (5, 96), (33, 576), (257, 160)])
@pytest.mark.parametrize("tokens", [1, 3])
def test_gemv(emu, dtype, rows, cols, tokens):
    rng = np.random.default_rng(rows * 1000 + cols)
    raw, w = weights(rng, rows, cols, dtype)
    x = rng.standard_normal((tokens, cols)).astype(np.float32)
    bias = rng.standard_normal(rows).astype(np.float32)
    acc0 = rng.standard_normal((tokens, rows)).astype(np.float32)
    for accumulate, has_bias in [(0, 0), (1, 1)]:
        out = acc0.copy()
        args = pack(
            GemvArgs, rows=rows, cols=cols, row_bytes=raw.shape[1], x_stride=cols, out_stride=rows
        )
        args["accumulate"], args["has_bias"] = accumulate, has_bias
        groups = (-(-rows // CONST["kGemvRowsPerGroup"]), tokens)
        threads = (CONST["kGemvSimdgroups"] * 32,)
        bufs = {0: raw, 1: x, 2: bias, 3: out, 4: args}
        (got,) = run_both_orders(emu, f"gemv_{dtype}", groups, threads, bufs, [3])
        terms = np.abs(x.astype(np.float64)) @ np.abs(w).T  # (tokens, rows): sum of |terms|
        ref = x.astype(np.float64) @ w.T + (acc0 + bias if accumulate else 0.0)
        # cols products and sums (2 cols U of the term magnitudes) plus the block scale, bias
        # and residual additions (a few U of the result).
        tol = 2 * (cols + 4) * U * terms + 4 * U * (np.abs(ref) + np.abs(acc0) + np.abs(bias))
        assert np.all(np.abs(got - ref) <= tol), f"gemv_{dtype} max err {np.abs(got - ref).max()}"


def test_gemv_large_rows_exact_on_integers(emu):
    """Integer weights and activations: every float32 operation is exact, so a wrong row or
    token index cannot hide inside a rounding bound."""
    rng = np.random.default_rng(7)
    rows, cols, tokens = 1031, 64, 2
    w = rng.integers(-8, 8, (rows, cols)).astype(np.float16)
    x = rng.integers(-8, 8, (tokens, cols)).astype(np.float32)
    out = np.zeros((tokens, rows), np.float32)
    args = pack(GemvArgs, rows=rows, cols=cols, row_bytes=cols * 2, x_stride=cols, out_stride=rows)
    groups = (-(-rows // CONST["kGemvRowsPerGroup"]), tokens)
    emu.dispatch("gemv_f16", groups, (64,), {0: w, 1: x, 2: out, 3: out, 4: args}, workers=2)
    np.testing.assert_array_equal(out, x @ w.astype(np.float32).T)


# ----------------------------------------------------------------------------- rope_kv


@pytest.mark.parametrize(("partial", "mscale"), [(False, 1.0), (True, 1.0), (True, 1.4142135)])
@pytest.mark.parametrize("neox", [True, False])
@pytest.mark.parametrize("cache", ["f32", "f16"])
@pytest.mark.parametrize(
    ("n_head", "n_kv", "hd", "tokens", "pos0"),
    [(1, 1, 2, 1, 0), (4, 2, 16, 3, 5), (9, 3, 64, 2, 37)],
)
def test_rope_kv(emu, neox, cache, n_head, n_kv, hd, tokens, pos0, partial, mscale):
    """RoPE + KV write; `partial`: only the first half of each head rotates (phi3's
    partial_rotary_factor 0.5; rope_dim even), the rest passes through to q, k and the cache;
    `mscale`: the rotated values scaled (longrope's attention factor)."""
    rot_dim = max(2, hd // 2 // 2 * 2) if partial else hd
    rng = np.random.default_rng(hd + tokens)
    cap = pos0 + tokens + 2
    q = rng.standard_normal((tokens, n_head * hd)).astype(np.float32)
    k = rng.standard_normal((tokens, n_kv * hd)).astype(np.float32)
    v = rng.standard_normal((tokens, n_kv * hd)).astype(np.float32)
    np_c = np.float32 if cache == "f32" else np.float16
    kc = np.full((n_kv * cap, hd), 7, np_c)  # rows outside pos0..pos0+tokens must stay untouched
    vc = np.full((n_kv * cap, hd), 7, np_c)
    inv = reference.rope_inv_freq(rot_dim, 10000.0).astype(np.float32)
    args = rope_kv_args(
        n_head,
        n_kv,
        hd,
        neox=neox,
        pos0=pos0,
        cap=cap,
        rope_dim=rot_dim if partial else 0,
        mscale=mscale,
    )
    q_ref, k_ref = q.astype(np.float64), k.astype(np.float64)
    bufs = {0: q, 1: k, 2: v, 3: kc, 4: vc, 5: inv, 6: args}
    gq, gk, gkc, gvc = run_both_orders(
        emu, f"rope_kv_{cache}", (tokens,), (64,), bufs, [0, 1, 3, 4]
    )
    pos = np.arange(pos0, pos0 + tokens)
    rot = reference.rope_rotate_halves if neox else reference.rope_interleaved

    def rope(x: np.ndarray, heads: int) -> np.ndarray:
        x = x.reshape(tokens, heads, hd).copy()
        x[..., :rot_dim] = rot(x[..., :rot_dim], pos, inv.astype(np.float64)) * mscale
        return x.reshape(tokens, -1)

    rq, rk = rope(q_ref, n_head), rope(k_ref, n_kv)
    # The kernel's angle is pos * inv_freq rounded to float32 (error <= pos * U relative, times
    # the angle), then cos/sin and two products each within a few U.
    ang_err = (pos0 + tokens) * np.abs(inv).max() * U * 2
    tol = (ang_err + 8 * U) * (np.abs(q_ref).max() + np.abs(k_ref).max()) * mscale
    np.testing.assert_allclose(gq, rq, rtol=0, atol=tol)
    np.testing.assert_allclose(gk, rk, rtol=0, atol=tol)
    rows = (np.arange(n_kv)[:, None] * cap + pos[None, :]).T  # (tokens, n_kv) cache rows
    want_k = rk.reshape(tokens, n_kv, hd)
    want_v = v.reshape(tokens, n_kv, hd)
    half_ulp = HALF_U * np.abs(want_k).max() if cache == "f16" else 0.0
    np.testing.assert_allclose(gkc[rows].astype(np.float64), want_k, rtol=0, atol=tol + half_ulp)
    np.testing.assert_array_equal(gvc[rows], want_v.astype(np_c))
    untouched = np.ones(n_kv * cap, bool)
    untouched[rows.ravel()] = False
    assert np.all(gkc[untouched] == 7) and np.all(gvc[untouched] == 7)


# ----------------------------------------------------------------------------- attention


@pytest.mark.parametrize("cache", ["f32", "f16"])
@pytest.mark.parametrize(
    ("n_head", "n_kv", "hd", "tokens", "pos0"),
    [(1, 1, 16, 1, 0), (4, 2, 64, 1, 6), (9, 3, 80, 3, 37), (2, 1, 256, 2, 3), (3, 3, 8, 4, 0)],
)
def test_attention_decode(emu, cache, n_head, n_kv, hd, tokens, pos0):
    rng = np.random.default_rng(hd * 7 + pos0)
    cap = pos0 + tokens + 3
    n_ctx = pos0 + tokens
    np_c = np.float32 if cache == "f32" else np.float16
    q = rng.standard_normal((tokens, n_head * hd)).astype(np.float32)
    kc = rng.standard_normal((n_kv * cap, hd)).astype(np_c)
    vc = rng.standard_normal((n_kv * cap, hd)).astype(np_c)
    kc.reshape(n_kv, cap, hd)[:, n_ctx:] = np.nan  # beyond the causal window: must never be read
    vc.reshape(n_kv, cap, hd)[:, n_ctx:] = np.nan
    out = np.zeros((tokens, n_head * hd), np.float32)
    scale = 1.0 / np.sqrt(hd)
    args = pack(AttnArgs, n_head=n_head, n_head_kv=n_kv, head_dim=hd, pos0=pos0, kv_capacity=cap)
    args["q_stride"], args["out_stride"], args["scale"] = n_head * hd, n_head * hd, scale
    threads = (CONST["kAttnSimdgroups"] * 32,)
    (got,) = run_both_orders(
        emu,
        f"attention_decode_{cache}",
        (n_head, tokens),
        threads,
        {0: q, 1: kc, 2: vc, 3: out, 4: args},
        [3],
    )
    k = kc.astype(np.float64).reshape(n_kv, cap, hd)
    v = vc.astype(np.float64).reshape(n_kv, cap, hd)
    group = n_head // n_kv
    ref = np.zeros((tokens, n_head, hd))
    for t in range(tokens):
        for h in range(n_head):
            s = (
                k[h // group, : pos0 + t + 1]
                @ q[t, h * hd : (h + 1) * hd].astype(np.float64)
                * scale
            )
            p = np.exp(s - s.max())
            ref[t, h] = p @ v[h // group, : pos0 + t + 1] / p.sum()
    # Scores: hd-term dot products (2 hd U relative to |q||k|), exp of a difference (a few U
    # of 1 per unit of score error); outputs are convex combinations of |v| <= max|v|.
    kmax, vmax = np.abs(k[:, :n_ctx]).max(), np.abs(v[:, :n_ctx]).max()
    score_err = 2 * (hd + 4) * U * np.abs(q).max() * kmax * hd * scale
    tol = (score_err * 4 + (n_ctx + 8) * U * 4) * vmax
    np.testing.assert_allclose(got.reshape(tokens, n_head, hd), ref, rtol=0, atol=tol)


# ----------------------------------------------------------------------------- swiglu, embed


@pytest.mark.parametrize(("tokens", "cols"), [(1, 1), (2, 255), (3, 257), (1, 1536)])
def test_swiglu(emu, tokens, cols):
    rng = np.random.default_rng(cols)
    gate = (rng.standard_normal((tokens, cols)) * 4).astype(np.float32)
    up = rng.standard_normal((tokens, cols)).astype(np.float32)
    ref = reference.silu(gate.astype(np.float64)) * up
    args = pack(SwiGluArgs, cols=cols, gate_stride=cols, up_stride=cols)
    groups = (-(-cols // CONST["kElementwiseThreads"]), tokens)
    (got,) = run_both_orders(
        emu, "swiglu_f32", groups, (CONST["kElementwiseThreads"],), {0: gate, 1: up, 2: args}, [0]
    )
    # exp (a few U), 1 + e, the division and the product: within 8 U of the result.
    np.testing.assert_allclose(got, ref, rtol=8 * U, atol=1e-30)


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """HF's gelu_pytorch_tanh in float64."""
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


@pytest.mark.parametrize(("tokens", "cols"), [(1, 1), (3, 257), (1, 2048)])
def test_swiglu_gelu(emu, tokens, cols):
    """gelu = 1: the GELU-tanh gate (gemma). The float32 chain (cube, fma-free sums, tanh within
    a few ulps of a value in [-1, 1], products) is within 16 U of |gelu(g) u| plus 8 U of |g u|
    (the cancellation of 1 + tanh near -1 where the gate goes to 0)."""
    rng = np.random.default_rng(cols + 1)
    gate = (rng.standard_normal((tokens, cols)) * 4).astype(np.float32)
    up = rng.standard_normal((tokens, cols)).astype(np.float32)
    g64, u64 = gate.astype(np.float64), up.astype(np.float64)
    ref = gelu_tanh(g64) * u64
    args = pack(SwiGluArgs, cols=cols, gate_stride=cols, up_stride=cols, gelu=1)
    groups = (-(-cols // CONST["kElementwiseThreads"]), tokens)
    (got,) = run_both_orders(
        emu, "swiglu_f32", groups, (CONST["kElementwiseThreads"],), {0: gate, 1: up, 2: args}, [0]
    )
    tol = 16 * U * np.abs(ref) + 8 * U * np.abs(g64 * u64)
    assert np.all(np.abs(got - ref) <= tol)
    assert not np.allclose(got, reference.silu(g64) * u64, rtol=1e-3)  # really the other gate


@pytest.mark.parametrize("dtype", GEMV_TYPES)
@pytest.mark.parametrize("cols", [32, 96, 288])
def test_embed(emu, dtype, cols):
    rng = np.random.default_rng(cols)
    vocab = 11
    raw, table = weights(rng, vocab, cols, dtype)
    tokens = np.array([0, 10, 3, 3], np.int32)
    out = np.zeros((len(tokens), cols), np.float32)
    args = pack(EmbedArgs, cols=cols, row_bytes=raw.shape[1], out_stride=cols, scale=0.5)
    groups = (-(-cols // CONST["kElementwiseThreads"]), len(tokens))
    (got,) = run_both_orders(
        emu,
        f"embed_{dtype}",
        groups,
        (CONST["kElementwiseThreads"],),
        {0: raw, 1: tokens, 2: out, 3: args},
        [2],
    )
    # Dequantization is one float32 product (plus the Q4_1 minimum): exactly what numpy does;
    # the scale 0.5 is exact.
    np.testing.assert_array_equal(got, (table[tokens] * 0.5).astype(np.float32))
