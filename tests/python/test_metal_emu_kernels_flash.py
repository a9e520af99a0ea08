"""flash_attn (shaders/flash_attn.h, prefill attention over the KV cache) run by the Metal
emulator, against the float64 NumPy causal attention (tests/reference.py) and against
attention_decode on the same inputs.

Tolerances are derived as in test_metal_emu_kernels.py: ``U = 2**-24`` is the float32 unit
roundoff, a float32 sum of ``k`` terms is within ``k * U * sum(|terms|)`` of the exact sum, and
the float64 reference stands for the exact result. The caches hold f16 or f32 values and the
reference reads exactly those values (f16 -> float is exact), so both cache types share one bound.
Every dispatch also runs with the lanes of each threadgroup in reverse order and must give
bit-identical output (threadgroup memory is poisoned with NaN: a missing barrier shows).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import reference
from emu_harness import (
    CONST,
    ROOT,
    AttnArgs,
    _args,
    pack,
    run_both_orders,
)

U = 2.0**-24

# Mirrors shaders/args.h FlashAttnArgs (48 bytes, checked below).
FlashAttnArgs = _args(
    "FlashAttnArgs",
    [(f, "u") for f in ("n_head", "n_head_kv", "head_dim", "pos0", "kv_capacity", "q_stride")]
    + [("out_stride", "u"), ("n_tokens", "u"), ("scale", "f"), ("window", "u"), ("softcap", "f")]
    + [("pad0", "u")],
)


def test_args_mirror_matches_header():
    text = (ROOT / "shaders" / "args.h").read_text()
    assert f"sizeof(FlashAttnArgs) == {FlashAttnArgs.itemsize}" in text
    assert CONST["kFlashTileQ"] == CONST["kFlashSimdgroups"] * CONST["kFlashQueriesPerSimdgroup"]
    assert CONST["kFlashQueriesPerSimdgroup"] * CONST["kFlashTileKV"] == 32
    assert CONST["kFlashThreads"] == CONST["kFlashSimdgroups"] * 32


def test_library_lists_flash_attn(emu):
    assert {"flash_attn_f32", "flash_attn_f16"} <= set(emu.kernels)


def flash_bound(q, k, v, ref, n_kv, hd, tokens, pos0, scale):
    """Largest |flash_attn - exact|, shape (tokens, n_head, hd); ref is the exact output.

    With A = scale * sum_d |q_d k_d| (largest over the row's visible positions), T the KV tiles
    the row goes through and vmax the largest |v| it reads:
    - a score is the sum, per lane, of its ceil(hd / 32) products, then 5 tree levels over the
      lanes, after q * scale and the product roundings: |score error| <= e_s = (dpl + 7) U A;
    - weights: out = sum_j w_j v_j / sum_j w_j is unchanged by a common factor of the w_j, so
      only per-weight exponent errors matter: e_s, the roundings of s - m and of the rescale
      differences m_old - m_new (U times a score range, together <= 2 U * 2 A), and the exp of p
      and of the <= T rescale factors (exp within 1 ulp = 2 U relative). Exponent errors of at
      most d move out = sum w_j v_j / sum w_j by at most (e^d - 1) sum w |v_j - out| / (e^-d sum w)
      <= (e^2d - e^d) max_j |v_j - out| (per dim: the spread of the visible v around the exact
      output);
    - accumulation: a term of o passes <= 8 adds in its tile, then a rescale product and 8 adds
      per later tile, plus its own product (9 T + 2 roundings of at most vmax * sum w); l passes
      the 3-level lane sum and 2 roundings per tile (2 T + 4, positive terms); one division.
    """
    n_head = q.shape[1]
    group = n_head // n_kv
    dpl = -(-hd // 32)
    tile_kv = CONST["kFlashTileKV"]
    bound = np.zeros((tokens, n_head, hd))
    for t in range(tokens):
        n_ctx = pos0 + t + 1
        # the row's tile loop runs to its query tile's last visible position
        last_t = min((t // CONST["kFlashTileQ"] + 1) * CONST["kFlashTileQ"], tokens) - 1
        n_tiles = -(-(pos0 + last_t + 1) // tile_kv)
        for h in range(n_head):
            kh, vh = k[h // group, :n_ctx], v[h // group, :n_ctx]
            a = scale * (np.abs(kh) @ np.abs(q[t, h])).max()
            e_s = (dpl + 7) * U * a
            d = e_s + 4 * U * a + 2 * U * (n_tiles + 1)
            acc = (9 * n_tiles + 2 + 2 * n_tiles + 4 + 1) * U
            spread = np.abs(vh - ref[t, h]).max(axis=0)  # (hd,)
            bound[t, h] = (np.expm1(2 * d) - np.expm1(d)) * spread + acc * np.abs(vh).max()
    return bound


def decode_bound(q, k, v, hd, n_ctx, scale):
    """attention_decode's bound from test_metal_emu_kernels.py::test_attention_decode."""
    kmax, vmax = np.abs(k[:, :n_ctx]).max(), np.abs(v[:, :n_ctx]).max()
    score_err = 2 * (hd + 4) * U * np.abs(q).max() * kmax * hd * scale
    return (score_err * 4 + (n_ctx + 8) * U * 4) * vmax


def exact_attention(q, k, v, pos0, scale):
    """q: (tokens, n_head, hd) at positions pos0..; k, v: (n_kv, >= pos0 + tokens, hd).
    reference.causal_attention on the whole window (queries before pos0 are zero and dropped)."""
    tokens, n_head, hd = q.shape
    n_ctx = pos0 + tokens
    qf = np.zeros((n_ctx, n_head, hd))
    qf[pos0:] = q
    kt = np.ascontiguousarray(k[:, :n_ctx].transpose(1, 0, 2))
    vt = np.ascontiguousarray(v[:, :n_ctx].transpose(1, 0, 2))
    return reference.causal_attention(qf, kt, vt, scale)[pos0:].reshape(tokens, n_head, hd)


CASES = [  # (n_head, n_kv, head_dim, n_tokens, pos0)
    (1, 1, 1, 1, 0),
    (4, 2, 1, 7, 5),
    (1, 1, 8, 2, 0),
    (9, 3, 8, 70, 37),
    (4, 2, 64, 33, 0),
    (8, 1, 64, 16, 37),
    (9, 3, 80, 7, 37),
    (8, 1, 128, 70, 5),
    (4, 2, 256, 33, 37),
    (1, 1, 256, 2, 5),
]


@pytest.mark.parametrize("cache", ["f32", "f16"])
@pytest.mark.parametrize(("n_head", "n_kv", "hd", "tokens", "pos0"), CASES)
def test_flash_attn(emu, cache, n_head, n_kv, hd, tokens, pos0):
    rng = np.random.default_rng(hd * 131 + tokens * 7 + pos0)
    n_ctx = pos0 + tokens
    cap = n_ctx + 3
    np_c = np.float32 if cache == "f32" else np.float16
    q_stride, out_stride = n_head * hd + 3, n_head * hd + 5  # padded rows: strides are honoured
    q = rng.standard_normal((tokens, q_stride)).astype(np.float32)
    kc = (rng.standard_normal((n_kv * cap, hd)) * 2).astype(np_c)
    vc = rng.standard_normal((n_kv * cap, hd)).astype(np_c)
    kc.reshape(n_kv, cap, hd)[:, n_ctx:] = np.nan  # beyond the causal window: must never be read
    vc.reshape(n_kv, cap, hd)[:, n_ctx:] = np.nan
    scale = 1.0 / math.sqrt(hd)
    sentinel = np.float32(-7.25)
    out = np.full((tokens, out_stride), sentinel, np.float32)
    args = pack(
        FlashAttnArgs,
        n_head=n_head,
        n_head_kv=n_kv,
        head_dim=hd,
        pos0=pos0,
        kv_capacity=cap,
        q_stride=q_stride,
        out_stride=out_stride,
        n_tokens=tokens,
        scale=scale,
    )
    # One spare query tile on the grid: it must return without touching anything.
    groups = (n_head, -(-tokens // CONST["kFlashTileQ"]) + 1)
    (got,) = run_both_orders(
        emu,
        f"flash_attn_{cache}",
        groups,
        (CONST["kFlashThreads"],),
        {0: q, 1: kc, 2: vc, 3: out, 4: args},
        [3],
    )
    assert np.all(got[:, n_head * hd :] == sentinel), "flash_attn wrote past n_head * head_dim"
    got = got[:, : n_head * hd].reshape(tokens, n_head, hd).astype(np.float64)

    q64 = q[:, : n_head * hd].astype(np.float64).reshape(tokens, n_head, hd)
    k = kc.astype(np.float64).reshape(n_kv, cap, hd)
    v = vc.astype(np.float64).reshape(n_kv, cap, hd)
    ref = exact_attention(q64, k, v, pos0, scale)
    tol = flash_bound(q64, k, v, ref, n_kv, hd, tokens, pos0, scale)
    err = np.abs(got - ref)
    assert np.all(err <= tol), f"flash_attn_{cache}: max err/bound {(err / tol).max():.3g}"

    # attention_decode, one query per threadgroup (grid y = n_tokens), on the same inputs: each
    # kernel is within its own bound of the exact result, so they agree within the sum.
    dec = np.zeros_like(out)
    dargs = pack(AttnArgs, n_head=n_head, n_head_kv=n_kv, head_dim=hd, pos0=pos0, kv_capacity=cap)
    dargs["q_stride"], dargs["out_stride"], dargs["scale"] = q_stride, out_stride, scale
    emu.dispatch(
        f"attention_decode_{cache}",
        (n_head, tokens),
        (CONST["kAttnSimdgroups"] * 32,),
        {0: q, 1: kc, 2: vc, 3: dec, 4: dargs},
    )
    dec = dec[:, : n_head * hd].reshape(tokens, n_head, hd).astype(np.float64)
    both = tol + decode_bound(q64, k, v, hd, n_ctx, scale)
    assert np.all(np.abs(got - dec) <= both), (
        f"flash_attn_{cache} vs attention_decode: max diff/bound {(np.abs(got - dec) / both).max():.3g}"
    )


def windowed_attention(q, k, v, pos0, scale, window, softcap):
    """Exact attention of queries at pos0.. over positions t - window + 1 .. t (window 0: all),
    scores soft-capped (softcap 0: off), in float64: HF's sliding-window / softcap semantics."""
    tokens, n_head, hd = q.shape
    group = n_head // k.shape[0]
    out = np.zeros_like(q)
    for t in range(tokens):
        pos = pos0 + t
        lo = max(0, pos - window + 1) if window else 0
        for h in range(n_head):
            kh, vh = k[h // group, lo : pos + 1], v[h // group, lo : pos + 1]
            s = kh @ q[t, h] * scale
            if softcap:
                s = softcap * np.tanh(s / softcap)
            p = np.exp(s - s.max())
            out[t, h] = p @ vh / p.sum()
    return out


@pytest.mark.parametrize("cache", ["f32", "f16"])
@pytest.mark.parametrize(
    ("window", "softcap"), [(1, 0.0), (3, 0.0), (8, 0.0), (33, 0.0), (0, 2.5), (5, 1.5)]
)
def test_window_and_softcap(emu, cache, window, softcap):
    """Sliding window (the first queries see fewer than `window` positions, later ones exactly
    `window`; windows shorter than a KV tile and than the decode kernel's simdgroup count, so
    whole tiles / simdgroups see nothing) and score soft-capping, in flash_attn and
    attention_decode. Bounds: flash_bound / decode_bound over all positions (a superset of the
    window, so still upper bounds) plus the tanh evaluation (a few ulps of |score| <= softcap:
    exponent error <= 4 U softcap, doubled) times the spread of v."""
    n_head, n_kv, hd, tokens, pos0 = 4, 2, 64, 40, 9
    rng = np.random.default_rng(window * 10 + int(softcap * 10))
    n_ctx = pos0 + tokens
    cap = n_ctx + 3
    np_c = np.float32 if cache == "f32" else np.float16
    q = rng.standard_normal((tokens, n_head * hd)).astype(np.float32)
    kc = (rng.standard_normal((n_kv * cap, hd)) * 2).astype(np_c)
    vc = rng.standard_normal((n_kv * cap, hd)).astype(np_c)
    kc.reshape(n_kv, cap, hd)[:, n_ctx:] = np.nan
    vc.reshape(n_kv, cap, hd)[:, n_ctx:] = np.nan
    scale = 1.0 / math.sqrt(hd)
    q64 = q.astype(np.float64).reshape(tokens, n_head, hd)
    k = kc.astype(np.float64).reshape(n_kv, cap, hd)
    v = vc.astype(np.float64).reshape(n_kv, cap, hd)
    ref = windowed_attention(q64, k, v, pos0, scale, window, softcap)
    tanh_err = 8 * U * softcap * 2 * np.abs(v[:, :n_ctx]).max()

    out = np.zeros((tokens, n_head * hd), np.float32)
    args = pack(
        FlashAttnArgs,
        n_head=n_head,
        n_head_kv=n_kv,
        head_dim=hd,
        pos0=pos0,
        kv_capacity=cap,
        q_stride=n_head * hd,
        out_stride=n_head * hd,
        n_tokens=tokens,
        scale=scale,
        window=window,
        softcap=softcap,
    )
    groups = (n_head, -(-tokens // CONST["kFlashTileQ"]))
    (got,) = run_both_orders(
        emu,
        f"flash_attn_{cache}",
        groups,
        (CONST["kFlashThreads"],),
        {0: q, 1: kc, 2: vc, 3: out, 4: args},
        [3],
    )
    got = got.reshape(tokens, n_head, hd).astype(np.float64)
    tol = flash_bound(q64, k, v, ref, n_kv, hd, tokens, pos0, scale) + tanh_err
    assert np.all(np.isfinite(got))
    assert np.all(np.abs(got - ref) <= tol), (
        f"flash: max err/bound {(np.abs(got - ref) / tol).max():.3g}"
    )

    dec = np.zeros((tokens, n_head * hd), np.float32)
    dargs = pack(AttnArgs, n_head=n_head, n_head_kv=n_kv, head_dim=hd, pos0=pos0, kv_capacity=cap)
    dargs["q_stride"], dargs["out_stride"], dargs["scale"] = n_head * hd, n_head * hd, scale
    dargs["window"], dargs["softcap"] = window, softcap
    (dec,) = run_both_orders(
        emu,
        f"attention_decode_{cache}",
        (n_head, tokens),
        (CONST["kAttnSimdgroups"] * 32,),
        {0: q, 1: kc, 2: vc, 3: dec, 4: dargs},
        [3],
    )
    dec = dec.reshape(tokens, n_head, hd).astype(np.float64)
    dtol = decode_bound(q64, k, v, hd, n_ctx, scale) + tanh_err
    assert np.all(np.abs(dec - ref) <= dtol), (
        f"decode: max err/bound {(np.abs(dec - ref) / dtol).max():.3g}"
    )
