"""Quantized KV cache (``kv_cache_dtype="q8_0" | "q4_0"``, cpu): rows quantized as rope_kv writes
them, attention reading the blocks directly (the Metal plan's: test_metal_emu_kernels_kv_quant.py).

References (independent of the engine):
* ``quantize_q8_0`` / ``quantize_q4_0`` below, written from GGML's block format and its reference
  rounding (``quantize_row_q8_0_ref`` / ``quantize_row_q4_0_ref``), cross-checked against
  ``gguf.quants``; the cache bytes rope_kv writes must equal them bit for bit.
* Attention in float64 (``reference.causal_attention``) on the dequantized K/V rows, with the
  query quantized as the engine quantizes it for the integer K dots (``quantize_act_q8``, the
  q8_0 activations llama.cpp pairs with a quantized K).
* Whole tiny models: ``reference.forward`` with that attention (K/V quantized, q quantized for
  the K dots) patched in, and the engine's own f32 cache (the measured cost).

Batch invariance: a token's logits do not depend on the batch (ragged batches, prefill chunks,
decode) or the thread split, bit for bit, as for the float caches.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("metallic._core")

import metallic  # noqa: E402
import reference as ref  # noqa: E402
import tiny_families as tf  # noqa: E402
import tiny_models as tm  # noqa: E402
from metallic import _core, errors  # noqa: E402
from metallic.dtypes import DType  # noqa: E402
from reference_quant import dequant_act, dequant_q4_0, dequant_q8_0, quantize_act_q8  # noqa: E402

K = _core.kernels
KV_IDS = {
    "f32": int(DType.F32),
    "f16": int(DType.F16),
    "q8_0": int(DType.Q8_0),
    "q4_0": int(DType.Q4_0),
}
QUANT_KV = ["q8_0", "q4_0"]
BLOCK_BYTES = {"q8_0": 34, "q4_0": 18}
CONTEXT = 64

# ----------------------------------------------------------------------------- numpy GGML quantizers


def _round_half_away(y: np.ndarray) -> np.ndarray:
    """C's roundf on float32 values (exact: floor and the fraction are exact below 2^23)."""
    a = np.abs(y)
    f = np.floor(a)
    return np.copysign(f + (a - f >= 0.5), y)


def _inverse(d: np.ndarray) -> np.ndarray:
    """1/d in float32; 0 where d is 0 or 1/d overflows (such a d is 0 in fp16 anyway)."""
    with np.errstate(divide="ignore", over="ignore"):
        inv = np.float32(1) / d
    return np.where(np.isfinite(inv) & (d != 0), inv, np.float32(0)).astype(np.float32)


def quantize_q8_0(x: np.ndarray) -> np.ndarray:
    """(..., n) float32 rows -> (..., n / 32 * 34) Q8_0 bytes. Per block of 32: d = amax / 127,
    q = roundf(x * (1 / d)) in float32, stored as fp16 d (little endian) then 32 int8."""
    x = np.asarray(x, np.float32)
    xb = x.reshape(-1, 32)
    d = np.abs(xb).max(axis=1) / np.float32(127)
    q = _round_half_away(xb * _inverse(d)[:, None]).astype(np.int8)
    blocks = np.concatenate(
        [d.astype("<f2").view(np.uint8).reshape(-1, 2), q.view(np.uint8)], axis=1
    )
    return blocks.reshape(*x.shape[:-1], x.shape[-1] // 32 * 34)


def quantize_q4_0(x: np.ndarray) -> np.ndarray:
    """(..., n) float32 rows -> (..., n / 32 * 18) Q4_0 bytes. Per block: m = the first element
    of largest |x|, d = m / -8, code = min(15, trunc(x * (1 / d) + 8.5)) in float32 (value
    (code - 8) * d); fp16 d, then 16 bytes: code[i] | code[i + 16] << 4."""
    x = np.asarray(x, np.float32)
    xb = x.reshape(-1, 32)
    m = xb[np.arange(len(xb)), np.argmax(np.abs(xb), axis=1)]
    d = m / np.float32(-8)
    y = (xb * _inverse(d)[:, None]).astype(np.float32) + np.float32(8.5)
    code = np.minimum(np.float32(15), np.trunc(y)).astype(np.uint8)
    qs = code[:, :16] | (code[:, 16:] << 4)
    blocks = np.concatenate([d.astype("<f2").view(np.uint8).reshape(-1, 2), qs], axis=1)
    return blocks.reshape(*x.shape[:-1], x.shape[-1] // 32 * 18)


QUANTIZE = {"q8_0": quantize_q8_0, "q4_0": quantize_q4_0}
DEQUANT = {"q8_0": dequant_q8_0, "q4_0": dequant_q4_0}


def kv_round_trip(x: np.ndarray, kv: str) -> np.ndarray:
    """The values a cache of dtype ``kv`` holds for float32 rows x (..., head_dim)."""
    x = np.asarray(x, np.float32)
    if kv == "f32":
        return x.astype(np.float64)
    if kv == "f16":
        return x.astype(np.float16).astype(np.float64)
    return DEQUANT[kv](QUANTIZE[kv](x)).reshape(x.shape).astype(np.float64)


@pytest.mark.parametrize("kv", QUANT_KV)
def test_numpy_quantizers_match_gguf(kv):
    """The quantizers above agree with gguf.quants (GGML's reference ported to numpy)."""
    gq = pytest.importorskip("gguf.quants")
    from gguf import GGMLQuantizationType as GT

    rng = np.random.default_rng(1)
    x = (rng.standard_normal((64, 64)) * rng.choice([1e-3, 1.0, 40.0], (64, 1))).astype(np.float32)
    x[0, :32] = 0.0
    x[1, 5] = x[1, 9] = -np.abs(x[1]).max() - 1  # a tie for the largest |x|
    want = gq.quantize(x, GT[kv.upper()]).reshape(x.shape[0], -1)
    np.testing.assert_array_equal(QUANTIZE[kv](x), want)


# ----------------------------------------------------------------------------- kernel level


def _qkv(n, n_head, n_kv, hd, seed, spread=1.0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n, n_head * hd)).astype(np.float32)
    k = (rng.standard_normal((n, n_kv * hd)) * spread).astype(np.float32)
    v = rng.standard_normal((n, n_kv * hd)).astype(np.float32)
    return q, k, v


def ref_attention(q, k, v, n_head, n_kv, hd, kv, scale, window=0, softcap=0.0):
    """float64 attention on the values the cache holds; a quantized K is dotted with the query
    quantized to q8 blocks (exact in float64: int8 times a float32 scale)."""
    n = q.shape[0]
    qh = q.reshape(n, n_head, hd)
    if kv in QUANT_KV:
        qh = dequant_act(*quantize_act_q8(qh))
    kd = kv_round_trip(k.reshape(n, n_kv, hd), kv)
    vd = kv_round_trip(v.reshape(n, n_kv, hd), kv)
    return ref.causal_attention(
        qh.astype(np.float64), kd, vd, scale, window=window or None, softcap=softcap or None
    )


def _run(
    kv,
    q,
    k,
    v,
    n_head,
    n_kv,
    hd,
    cap,
    *,
    window=0,
    scale=None,
    softcap=0.0,
    chunks=None,
    threads=2,
    split_bytes=-1,
):
    n = q.shape[0]
    scale = 1.0 / np.sqrt(hd) if scale is None else scale
    return K.kv_attention(
        KV_IDS[kv],
        q,
        k,
        v,
        n_head,
        n_kv,
        hd,
        cap,
        window,
        scale,
        softcap,
        chunks or [n],
        threads,
        split_bytes,
    )


# Tolerance: the engine's float32 steps on the same quantized values as the reference: exact
# integer K dots times one float32 scale product per block, exp (exp8, ~1 ulp) and the sums over
# <= 203 positions in float32, the V accumulation as one FMA per position. Measured worst 1.0e-6
# of max |out| (q4_0, the ring case; <= 3.6e-7 for every other case and dtype, 2.5e-7 at 203
# positions); the bound leaves 10x.
TOL_KERNEL = 1e-5


@pytest.mark.parametrize("kv", ["f32", "f16", *QUANT_KV])
@pytest.mark.parametrize(
    "n, n_head, n_kv, hd",
    [(1, 2, 1, 32), (17, 4, 1, 64), (33, 6, 2, 64), (40, 8, 1, 32), (9, 2, 2, 256), (24, 3, 3, 96)],
)
def test_attention_matches_numpy(kv, n, n_head, n_kv, hd):
    """Groups of 4 (the x4 path), 3, 8 (two x4 passes) and 1; head_dim 32 .. 256; one token."""
    q, k, v = _qkv(n, n_head, n_kv, hd, seed=n + hd)
    out, kc, vc = _run(kv, q, k, v, n_head, n_kv, hd, cap=n)
    want = ref_attention(q, k, v, n_head, n_kv, hd, kv, 1.0 / np.sqrt(hd))
    err = np.abs(out - want).max() / np.abs(want).max()
    assert err <= TOL_KERNEL, f"rel err {err:.3e}"
    if kv in QUANT_KV:  # the cache: (kv head, position) rows, quantized as written
        rows = lambda x: x.reshape(n, n_kv, hd).transpose(1, 0, 2)  # noqa: E731
        np.testing.assert_array_equal(kc.reshape(n_kv, n, -1), QUANTIZE[kv](rows(k)))
        np.testing.assert_array_equal(vc.reshape(n_kv, n, -1), QUANTIZE[kv](rows(v)))
        assert kc.size == n_kv * n * hd // 32 * BLOCK_BYTES[kv]


@pytest.mark.parametrize("kv", QUANT_KV)
def test_ring_wrap_softcap_and_scales(kv):
    """A sliding-window ring of 12 rows (window 8) wrapped three times in chunks of 1..5, with a
    softcap, and K rows whose scale spans 1e-4..1e3 (amax per block)."""
    n, n_head, n_kv, hd, window, cap = 40, 4, 2, 64, 8, 12
    q, k, v = _qkv(n, n_head, n_kv, hd, seed=5)
    k *= np.geomspace(1e-4, 1e3, n, dtype=np.float32)[:, None]
    chunks = [5, 1, 3, 5, 2, 5, 4, 5, 5, 5]
    assert sum(chunks) == n
    out, kc, _ = _run(kv, q, k, v, n_head, n_kv, hd, cap, window=window, softcap=4.0, chunks=chunks)
    want = ref_attention(q, k, v, n_head, n_kv, hd, kv, 1 / 8, window=window, softcap=4.0)
    err = np.abs(out - want).max() / np.abs(want).max()
    assert err <= TOL_KERNEL, f"rel err {err:.3e}"
    last = k.reshape(n, n_kv, hd)[n - cap :]  # positions 28..39 in rows p % 12
    rows = np.roll(QUANTIZE[kv](last.transpose(1, 0, 2)), (n - cap) % cap, axis=1)
    np.testing.assert_array_equal(kc.reshape(n_kv, cap, -1), rows)


@pytest.mark.parametrize("kv", ["f16", *QUANT_KV])
@pytest.mark.parametrize("n_head, n_kv", [(8, 2), (6, 2), (5, 5), (4, 2), (14, 2)])
def test_batch_and_thread_invariance(kv, n_head, n_kv):
    """One prefill call, decode steps (one job per head: f16 dots eight rows at a time), uneven
    chunks and 1 or 2 threads: the same bits. Groups of 4, 3, 1, 2 and 7 (4 + 3) query heads."""
    n, hd = 30, 64
    q, k, v = _qkv(n, n_head, n_kv, hd, seed=9)
    runs = [
        _run(kv, q, k, v, n_head, n_kv, hd, n, chunks=c, threads=t)[0]
        for c, t in [([n], 2), ([1] * n, 2), ([7, 1, 13, 9], 1), ([n], 1)]
    ]
    for other in runs[1:]:
        np.testing.assert_array_equal(other, runs[0])


@pytest.mark.parametrize("kv", QUANT_KV)
def test_non_finite_rows_show_as_nan(kv):
    """A diverged K row (inf) is stored as a NaN block: the heads reading it give NaN, the rest
    of the cache is intact (no undefined float -> int conversion, no crash)."""
    n, hd = 4, 32
    q, k, v = _qkv(n, 2, 1, hd, seed=3)
    k[2, 7] = np.inf
    out, kc, _ = _run(kv, q, k, v, 2, 1, hd, n)
    assert np.isfinite(out[:2]).all() and np.isnan(out[2:]).all()
    d = kc.reshape(n, -1)[:, :2].copy().view("<f2")[:, 0]
    assert np.isnan(d[2]) and np.isfinite(d[[0, 1, 3]]).all()


@pytest.mark.parametrize("kv", ["f32", "f16", *QUANT_KV])
@pytest.mark.parametrize("n_head, n_kv, hd", [(9, 3, 64), (2, 1, 256)])
def test_long_decode_matches_numpy(kv, n_head, n_kv, hd):
    """Token by token over 203 positions (SmolLM2's head shape, and Gemma's head_dim 256): the
    decode kernels' row blocks, position blocks of 64 and softmax tails (203 = 25 * 8 + 3)."""
    n = 203
    q, k, v = _qkv(n, n_head, n_kv, hd, seed=hd)
    out, _, _ = _run(kv, q, k, v, n_head, n_kv, hd, cap=n, chunks=[1] * n)
    want = ref_attention(q, k, v, n_head, n_kv, hd, kv, 1.0 / np.sqrt(hd))
    err = np.abs(out - want).max() / np.abs(want).max()
    assert err <= TOL_KERNEL, f"rel err {err:.3e}"


@pytest.mark.parametrize("kv", ["f16", *QUANT_KV])
@pytest.mark.parametrize("n_head, n_kv, hd", [(9, 3, 64), (4, 1, 256), (6, 2, 96)])
def test_long_decode_split_is_bit_identical(kv, n_head, n_kv, hd):
    """A decode token's attention as three passes split over the threads (position blocks of
    dots, softmax per head, P·V per 32-element slice; forced here from the first position, by
    default from 1 MiB of K rows per KV head): the same bits as the prefill path (a job per KV
    head), the unsplit decode, one thread, and float64 within bound. 300 positions: blocks of 256
    and a tail."""
    n = 300
    q, k, v = _qkv(n, n_head, n_kv, hd, seed=n_head + hd)
    runs = [
        _run(kv, q, k, v, n_head, n_kv, hd, n, chunks=c, threads=t, split_bytes=b)[0]
        for c, t, b in [
            ([1] * n, 2, 0),
            ([n], 2, 0),
            ([1] * n, 2, -1),
            ([1] * n, 1, 0),
            ([255, 40, 1, 4], 2, 0),
        ]
    ]
    for other in runs[1:]:
        np.testing.assert_array_equal(other, runs[0])
    want = ref_attention(q, k, v, n_head, n_kv, hd, kv, 1.0 / np.sqrt(hd))
    err = np.abs(runs[0] - want).max() / np.abs(want).max()
    assert err <= TOL_KERNEL, f"rel err {err:.3e}"


@pytest.mark.parametrize("kv", ["f16", *QUANT_KV])
def test_long_decode_split_over_a_wrapped_ring(kv):
    """A sliding window of 300 in a ring of 320 rows, 420 positions: the split decode reads two
    runs of rows (the wrap) and equals prefill in chunks of 20 bit for bit, with a softcap."""
    n, n_head, n_kv, hd, window, cap = 420, 4, 2, 64, 300, 320
    q, k, v = _qkv(n, n_head, n_kv, hd, seed=7)
    kw = dict(window=window, softcap=30.0)
    dec = _run(kv, q, k, v, n_head, n_kv, hd, cap, chunks=[1] * n, split_bytes=0, **kw)[0]
    pre = _run(kv, q, k, v, n_head, n_kv, hd, cap, chunks=[20] * 21, **kw)[0]
    np.testing.assert_array_equal(dec, pre)
    want = ref_attention(q, k, v, n_head, n_kv, hd, kv, 1 / 8, window=window, softcap=30.0)
    err = np.abs(dec - want).max() / np.abs(want).max()
    assert err <= TOL_KERNEL, f"rel err {err:.3e}"


@pytest.mark.parametrize("kv", ["f32", "f16"])
def test_non_finite_key_gives_nan(kv):
    """A key with an inf makes the heads that read it NaN (not a silently renormalised softmax);
    the tokens before it are untouched."""
    n, hd = 12, 64
    q, k, v = _qkv(n, 3, 1, hd, seed=4)
    k[5, 9] = np.inf
    for chunks in ([n], [1] * n):
        out, _, _ = _run(kv, q, k, v, 3, 1, hd, n, chunks=chunks)
        assert np.isfinite(out[:5]).all() and np.isnan(out[5:]).all()


@pytest.mark.parametrize("kv", ["f32", "f16", *QUANT_KV])
def test_axpy_matches_numpy(kv):
    """acc + a * row (V accumulation): the selected kernel and the scalar reference against
    float64, within one rounding of a * d and of the FMA / add (2 ulp of the terms' size)."""
    n = 96
    rng = np.random.default_rng(2)
    x = rng.standard_normal(n).astype(np.float32) * 3
    raw = {
        "f32": lambda: x.view(np.uint8),
        "f16": lambda: x.astype(np.float16).view(np.uint8),
    }.get(kv, lambda: QUANTIZE[kv](x))()
    acc = rng.standard_normal(n).astype(np.float32)
    a = np.float32(0.37)
    row = kv_round_trip(x, kv)
    want = acc.astype(np.float64) + np.float64(a) * row
    size = np.abs(acc) + np.abs(np.float64(a) * row)
    for simd in (True, False):
        got = K.axpy(KV_IDS[kv], np.ascontiguousarray(raw), n, float(a), acc, simd)
        assert np.all(np.abs(got - want) <= 2 * np.finfo(np.float32).eps * size), simd


# ----------------------------------------------------------------------------- engine level

FAMILIES_HD32 = ["qwen3", "gemma3", "gemma2"]  # tiny_families with head_dim 32


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_kvq")


def _model(models_dir, family, **over) -> tm.TinyModel:
    return tm.make_model(
        models_dir, family, "f32", "gguf", tf.USUAL_TIED.get(family, False), **over
    )


def _load(m, kv, **kw):
    kw = {"threads": 2, "context_length": CONTEXT, **kw}
    return metallic.load(m.path, device="cpu", kv_cache_dtype=kv, **kw)


def _tokens(m, n, seed):
    return [int(t) for t in np.random.default_rng(seed).integers(0, m.cfg["vocab_size"], n)]


def test_head_dim_must_fill_whole_blocks(models_dir):
    m = _model(models_dir, "llama")  # head_dim 16
    for kv in QUANT_KV:
        with pytest.raises(errors.UnsupportedDType, match=r"^\[engine\] kv_dtype Q\d_0: head_dim"):
            _load(m, kv)
    with pytest.raises(errors.InvalidArgument, match="kv_cache_dtype: expected one of"):
        _load(m, "q8")


@pytest.mark.parametrize("kv", QUANT_KV)
def test_bytes_per_token(models_dir, kv):
    """Every global layer keeps 2 x n_kv rows of head_dim / 32 blocks per position."""
    m = _model(models_dir, "qwen3")
    with _load(m, kv) as model, _load(m, "f16") as half:
        e = model._engine
        cfg = m.cfg
        row = cfg["head_dim"] // 32 * BLOCK_BYTES[kv]
        per_token = cfg["num_hidden_layers"] * 2 * cfg["num_key_value_heads"] * row
        assert e.kv_bytes(10) == 10 * per_token
        assert e.kv_cache_bytes == CONTEXT * per_token
        assert e.kv_cache_bytes * 64 == half._engine.kv_cache_bytes * BLOCK_BYTES[kv]
        assert e.kv_dtype == KV_IDS[kv]


def _quantized_attention(kv):
    """reference.causal_attention with the engine's quantized cache: K and V rows (float32 after
    RoPE) through the cache dtype, the query quantized to q8 blocks for the K dots."""
    plain = ref.causal_attention

    def attention(q, k, v, scale, *, window=None, softcap=None):
        qd = dequant_act(*quantize_act_q8(q.astype(np.float32)))
        return plain(
            qd, kv_round_trip(k, kv), kv_round_trip(v, kv), scale, window=window, softcap=softcap
        )

    return attention


# Tolerances, relative to max |reference logit| over the 24 positions of each family. Against
# the reference with the same quantization: the engine's float32 arithmetic (1e-7 level) plus
# K/V elements one quantization step apart where float32 and float64 RoPE land on different
# sides of a rounding boundary: measured worst 6.3e-6 (q8_0, gemma3) and 1.6e-7 (q4_0); a Q4_0
# step is 16x a Q8_0 step, hence its bound. The cost of the quantization itself (the engine
# against the plain f32 reference) measures 1.7e-3 .. 4.6e-3 (q8_0) and 1.8e-2 .. 6.4e-2
# (q4_0): the quantized reference must explain nearly all of it.
TOL_REF = {"q8_0": 1e-4, "q4_0": 1e-3}


@pytest.mark.parametrize("kv", QUANT_KV)
@pytest.mark.parametrize("family", FAMILIES_HD32)
def test_logits_match_the_reference_with_a_quantized_cache(models_dir, monkeypatch, family, kv):
    m = _model(models_dir, family)
    tokens = _tokens(m, 24, seed=11)  # windowed layers (8) see a full window
    with _load(m, kv) as model:
        got = model.logits(tokens).astype(np.float64)
    plain = ref.forward(m.cfg, m.ref_weights, tokens)
    monkeypatch.setattr(ref, "causal_attention", _quantized_attention(kv))
    want = ref.forward(m.cfg, m.ref_weights, tokens)
    scale = np.abs(want).max()
    err = np.abs(got - want).max() / scale
    cost = np.abs(got - plain).max() / scale
    assert err <= TOL_REF[kv], f"{family} {kv}: rel err {err:.2e} (vs f32 reference {cost:.2e})"
    assert err < cost / 4, (
        f"{family} {kv}: the quantization explains too little ({err:.2e}, {cost:.2e})"
    )


# KL(f32 cache || quantized cache) per position on the tiny random models (nats), measured worst
# 4.3e-4 (q8_0) and 3.9e-2 (q4_0), both on qwen3; bounds with ~3x margin. Tiny random models
# are a pessimistic case (a real model: the slow test below, README, kv_quant_cost.py).
KL_TINY = {"q8_0": 1.5e-3, "q4_0": 0.12}


@pytest.mark.parametrize("kv", QUANT_KV)
@pytest.mark.parametrize("family", FAMILIES_HD32)
def test_cost_against_the_f32_cache(models_dir, family, kv):
    m = _model(models_dir, family)
    tokens = _tokens(m, 40, seed=12)
    with _load(m, "f32") as full, _load(m, kv) as quant:
        want = full.logits(tokens)
        got = quant.logits(tokens)
    kl = ref.kl_divergence(want, got)
    assert kl.max() <= KL_TINY[kv], f"{family} {kv}: KL max {kl.max():.3e}"


def _ragged(engine, seqs, chunks):
    """Runs ``seqs`` in slots 0.. as ragged batches of ``chunks(step, i)`` tokens each (0: the
    sequence sits the step out); returns {(i, position): logits row}."""
    pos, got, step = [0] * len(seqs), {}, 0
    while any(p < len(s) for p, s in zip(pos, seqs, strict=True)):
        tokens, segs = [], []
        for i, s in enumerate(seqs):
            c = min(chunks(step, i), len(s) - pos[i])
            if c > 0:
                tokens += s[pos[i] : pos[i] + c]
                segs.append([i, c, pos[i], 1])
        step += 1
        if segs:
            engine.forward_batch(np.asarray(tokens, np.int32), np.asarray(segs, np.int64))
            for j, (i, c, p0, _) in enumerate(segs):
                got[(i, p0 + c - 1)] = engine.batch_logits()[j].copy()
                pos[i] += c
    return got


@pytest.mark.parametrize("kv", QUANT_KV)
@pytest.mark.parametrize("family", FAMILIES_HD32)
def test_ragged_batch_equals_each_sequence_alone(models_dir, family, kv):
    """As test_batch_engine.py for the float caches: three sequences in chunks of 1..4 (prefill
    beside decode), rings of 16 rows (window 8 + batch 8) wrapping; bit for bit."""
    m = _model(models_dir, family)
    with _load(m, kv, batch_size=8, parallel=3) as model:
        e = model._engine
        seqs = [_tokens(m, n, seed=20 + n) for n in (20, 5, 26)]
        want = []
        for s in seqs:
            out = np.empty((len(s), e.n_vocab), np.float32)
            e.forward(np.asarray(s, np.int32), 0, out, True)
            want.append(out)
        got = _ragged(e, seqs, lambda step, i: (1 + (i + step) % 4) if step >= i else 0)
        for (i, p), row in got.items():
            np.testing.assert_array_equal(row, want[i][p], err_msg=f"{family} seq {i} pos {p}")


@pytest.mark.parametrize("kv", QUANT_KV)
def test_copy_seq_and_read_write_kv(models_dir, kv):
    """copy_seq and the prompt-cache rows (read_kv / write_kv) move whole quantized rows: the
    continuation's logits are those of the sequence computed alone."""
    m = _model(models_dir, "gemma3")  # rings: window 8 + batch 8 rows
    with _load(m, kv, batch_size=8, parallel=2) as model:
        e = model._engine
        a, tail = _tokens(m, 20, seed=30), _tokens(m, 6, seed=31)
        want = np.empty((26, e.n_vocab), np.float32)
        e.forward(np.asarray(a + tail, np.int32), 0, want, True)
        for p in (0, 8, 16):
            c = min(8, 20 - p)
            e.forward_batch(
                np.asarray(a[p : p + c], np.int32), np.asarray([[0, c, p, 0]], np.int64)
            )
        e.copy_seq(0, 1, 20)
        e.forward_batch(np.asarray(tail, np.int32), np.asarray([[1, 6, 20, 1]], np.int64))
        np.testing.assert_array_equal(e.batch_logits()[0], want[-1])
        last = np.empty((1, e.n_vocab), np.float32)
        e.forward(np.asarray(a, np.int32), 0, last, False)
        rows = np.empty(e.kv_bytes(20), np.uint8)
        e.read_kv(20, rows)
        e.forward(np.asarray(_tokens(m, 30, seed=32), np.int32), 0, last, False)  # overwrite
        e.write_kv(20, rows)
        out = np.empty((6, e.n_vocab), np.float32)
        e.forward(np.asarray(tail, np.int32), 20, out, True)
        np.testing.assert_array_equal(out, want[20:])


def test_prompt_cache_records_the_kv_dtype(models_dir, tmp_path):
    m = _model(models_dir, "qwen3")
    prefix = _tokens(m, 12, seed=40)
    path = tmp_path / "q8.mkv"
    with _load(m, "q8_0") as q8, _load(m, "f16") as half, _load(m, "q4_0") as q4:
        fresh = q8.logits(prefix + [3, 4])[-1]
        q8.reset_cache()
        assert q8.save_prompt_cache(path, prefix) == len(prefix)
        for other in (half, q4):
            with pytest.raises(errors.InvalidArgument, match=r"^\[load_prompt_cache\] .*kv_dtype"):
                other.load_prompt_cache(path)
        q8.reset_cache()
        assert q8.load_prompt_cache(path) == len(prefix)
        list(q8.stream_generate(prefix + [3, 4], max_tokens=1))
        np.testing.assert_array_equal(np.array(q8._engine.last_logits()), fresh)


# ----------------------------------------------------------------------------- a real model

REAL_BOUNDS = {  # (KL mean, KL max, top-1): about 2.5x the measured KL, top-1 a few points below
    "f16": (1.2e-2, 6e-2, 0.92),
    "q8_0": (1.5e-2, 0.15, 0.92),
    "q4_0": (0.5, 4.0, 0.65),
}


@pytest.mark.slow
def test_smollm2_cost_against_the_f32_cache(smollm2_path):
    """SmolLM2-135M-Instruct (Q4_1), the first 512 tokens of README.md teacher-forced, every
    position's logits against the f32 cache. Measured 2026-12-04 (AMD EPYC, AVX2, 2 threads):

    ====  ========  =======  =====
    KV    KL mean   KL max   top-1
    ====  ========  =======  =====
    f16   4.40e-3   2.02e-2  94.7%
    q8_0  5.73e-3   4.93e-2  94.5%
    q4_0  1.97e-1   1.72     71.9%
    ====  ========  =======  =====

    f16 is the floor any small change of the cache reaches on this model: its Q4_1 matmuls
    quantize their activations to int8, which turns K/V rounding into whole int8 steps here and
    there. Q8_0 costs about what f16 costs (asserted: at most 2x its mean KL); Q4_0 is a real
    loss at head_dim 64 (benchmarks/kv_quant_cost.py: 2k / 8k contexts, Gemma-3).
    """
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    kw = {"device": "cpu", "threads": 2, "context_length": 600}
    with metallic.load(smollm2_path, kv_cache_dtype="f32", **kw) as m:
        tokens = m.tokenizer.encode(text)[:512]
        want = m.logits(tokens)
    results = {}
    for kv in REAL_BOUNDS:
        with metallic.load(smollm2_path, kv_cache_dtype=kv, **kw) as m:
            got = m.logits(tokens)
        kl = ref.kl_divergence(want, got)
        results[kv] = (float(kl.mean()), float(kl.max()), ref.top1_agreement(want, got))
    for kv, (mean, worst, top1) in results.items():
        b_mean, b_max, b_top1 = REAL_BOUNDS[kv]
        assert mean <= b_mean and worst <= b_max and top1 >= b_top1, f"{kv}: {results[kv]}"
    assert results["q8_0"][0] <= 2 * results["f16"][0], results
