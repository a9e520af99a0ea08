"""Quantized KV cache (``kv_cache_dtype="q8_0" | "q4_0"``) on the Metal plan: rope_kv_q8_0 /
rope_kv_q4_0, attention_decode_* and flash_attn_* (shaders/kv_cache.h) run by the Metal emulator,
and whole tiny models on device="metal-emulated".

References:
* Cache bytes: the numpy GGML quantizers of test_kv_quant.py, applied to the kernel's own rotated
  k (the rotation is rope_kv_f32's, bit for bit; test_metal_emu_kernels.py checks it against
  float64) and to v, must equal the bytes rope_kv wrote, bit for bit: the emulator computes in
  IEEE float32 without fast math or FMA contraction, as the reference does. (Apple's compiler
  runs the shaders with fast math: there a Q4_0 code may move by one at an exact tie.)
* Attention: float64 attention on the dequantized cache. A dequantized value d * code (an fp16
  scale times a code of <= 8 bits) is exact in float32, so the kernels read exactly the
  reference's values and the derived bounds of the float caches (flash_bound / decode_bound of
  test_metal_emu_kernels_flash.py) apply unchanged; every dispatch also runs with the lanes in
  reverse order and must give the same bits.
* Models: reference.forward with attention on the K / V rows round-tripped through the cache
  dtype (the query in float, as the Metal kernels read it), and device="cpu" with the same cache
  dtype (tolerances measured, see TOL_REF and TOL_CPU).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("metallic._core")

from test_kv_quant import (  # noqa: E402
    BLOCK_BYTES,
    DEQUANT,
    KV_IDS,
    QUANT_KV,
    QUANTIZE,
    kv_round_trip,
)
from test_metal_emu_kernels_flash import (  # noqa: E402
    FlashAttnArgs,
    decode_bound,
    exact_attention,
    flash_bound,
    windowed_attention,
)

import emu_harness  # noqa: E402
import metallic  # noqa: E402
import reference as ref  # noqa: E402
import tiny_families as tf  # noqa: E402
import tiny_models as tm  # noqa: E402
from emu_harness import CONST, AttnArgs, pack, rope_kv_args, run_both_orders  # noqa: E402
from metallic import errors  # noqa: E402

U = 2.0**-24


def test_library_lists_the_quantized_kernels(emu):
    for kv in QUANT_KV:
        assert {f"rope_kv_{kv}", f"attention_decode_{kv}", f"flash_attn_{kv}"} <= set(emu.kernels)


def ggml_blocks(x: np.ndarray, kv: str) -> np.ndarray:
    """QUANTIZE[kv] of float32 rows (..., n), with the CPU device's rule for a block holding a
    non-finite value: scale NaN (fp16 0x7e00), codes 0 (q8_0) or 0x88 (value (8 - 8) * d, q4_0)."""
    x = np.asarray(x, np.float32)
    xb = x.reshape(-1, 32)
    bad = ~np.isfinite(xb).all(axis=1)
    out = QUANTIZE[kv](np.where(bad[:, None], np.float32(0), xb))
    out[bad, 0], out[bad, 1] = 0x00, 0x7E
    out[bad, 2:] = 0 if kv == "q8_0" else 0x88
    return out.reshape(*x.shape[:-1], -1)


def special_blocks() -> list[np.ndarray]:
    """Blocks of 32 at the edges of the rounding rules."""
    rng = np.random.default_rng(0)
    halves = (np.arange(32, dtype=np.float32) * 8 - np.float32(124.5)) / 64
    halves[0] = np.float32(-127 / 64)  # q8_0: amax 127/64, d = 1/64 exactly, x / d = k + .5
    blocks = [
        np.where(np.arange(32) % 3 == 0, np.float32(-0.0), np.float32(0.0)),  # zero, with -0.0
        halves,
        np.arange(-16, 16, dtype=np.float32) / 2,  # q4_0: m = -8, d = 1, x / d + 8.5 exact
    ]
    tie = np.clip(rng.standard_normal(32), -3, 3).astype(np.float32)
    tie[[5, 9]] = -4.0, 4.0  # the first value of largest |x| is negative
    blocks.append(tie)
    blocks.append(-tie)  # ... positive
    blocks.append(rng.standard_normal(32).astype(np.float32) * np.float32(1e-7))  # d below fp16
    blocks.append(rng.standard_normal(32).astype(np.float32) * np.float32(3e3))
    for bad in (np.inf, np.nan):
        b = rng.standard_normal(32).astype(np.float32)
        b[11] = bad
        blocks.append(b)
    return blocks


def _threads(n_head, n_kv, hd):  # the plan's stride_threads: whole simdgroups, 32..256
    return min(max(-(-(n_head + n_kv) * hd // 2 // 32), 1), 8) * 32


ROPE_CASES = [  # (n_head, n_kv, hd, tokens, pos0, cap): one token; odd counts; a ring wrapping
    (1, 1, 32, 1, 0, 1),
    (4, 2, 64, 3, 5, 10),
    (6, 3, 96, 3, 7, 4),
    (9, 3, 128, 2, 1, 5),
    (2, 1, 256, 2, 37, 40),
]


@pytest.mark.parametrize("kv", QUANT_KV)
@pytest.mark.parametrize(
    ("neox", "partial", "one_simdgroup"), [(True, False, False), (False, True, True)]
)
@pytest.mark.parametrize(("n_head", "n_kv", "hd", "tokens", "pos0", "cap"), ROPE_CASES)
def test_rope_kv_writes_ggml_blocks(
    emu, kv, neox, partial, one_simdgroup, n_head, n_kv, hd, tokens, pos0, cap
):
    """q and k rotate exactly as rope_kv_f32 rotates them; the cache rows of positions pos0.. are
    the GGML blocks of the rotated k and of v, other rows untouched. `partial`: half the dims
    rotate (mscale 1.4142135); `one_simdgroup`: 32 threads quantize every block."""
    rng = np.random.default_rng(hd * 3 + tokens)
    rot_dim = hd // 2 // 2 * 2 if partial else hd
    q = rng.standard_normal((tokens, n_head * hd)).astype(np.float32)
    k = (rng.standard_normal((tokens, n_kv * hd)) * 2).astype(np.float32)
    v = rng.standard_normal((tokens, n_kv * hd)).astype(np.float32)
    vb = v.reshape(-1, 32)
    for i, b in enumerate(special_blocks()[: len(vb)]):
        vb[i] = b
    if tokens > 1:
        k[-1, 3] = np.inf  # a diverged k row: its block is NaN after the rotation
    row_b = hd // 32 * BLOCK_BYTES[kv]
    kc = np.full(
        (n_kv * cap, row_b), 0x77, np.uint8
    )  # rows outside the tokens' must stay untouched
    vc = np.full((n_kv * cap, row_b), 0x77, np.uint8)
    inv = ref.rope_inv_freq(rot_dim, 10000.0).astype(np.float32)
    args = rope_kv_args(
        n_head,
        n_kv,
        hd,
        neox=neox,
        pos0=pos0,
        cap=cap,
        rope_dim=rot_dim if partial else 0,
        mscale=1.4142135 if partial else 1.0,
    )
    threads = 32 if one_simdgroup else _threads(n_head, n_kv, hd)
    f32 = {0: q.copy(), 1: k.copy(), 2: v.copy(), 3: np.zeros((n_kv * cap, hd), np.float32)}
    f32 |= {4: np.zeros((n_kv * cap, hd), np.float32), 5: inv, 6: args}
    emu.dispatch("rope_kv_f32", (tokens,), (threads,), f32)
    bufs = {0: q, 1: k, 2: v, 3: kc, 4: vc, 5: inv, 6: args}
    gq, gk, gkc, gvc = run_both_orders(
        emu, f"rope_kv_{kv}", (tokens,), (threads,), bufs, [0, 1, 3, 4]
    )
    np.testing.assert_array_equal(gq.view(np.uint32), f32[0].view(np.uint32))
    np.testing.assert_array_equal(gk.view(np.uint32), f32[1].view(np.uint32))
    rows = np.arange(n_kv)[None, :] * cap + ((pos0 + np.arange(tokens)) % cap)[:, None]
    np.testing.assert_array_equal(gkc[rows], ggml_blocks(gk.reshape(tokens, n_kv, hd), kv))
    np.testing.assert_array_equal(gvc[rows], ggml_blocks(v.reshape(tokens, n_kv, hd), kv))
    untouched = np.ones(n_kv * cap, bool)
    untouched[rows.ravel()] = False
    assert np.all(gkc[untouched] == 0x77) and np.all(gvc[untouched] == 0x77)


# ----------------------------------------------------------------------------- attention


def quantized_cache(rng, n_kv, rows, hd, kv, spread):
    """Random rows through the cache format: (bytes (n_kv * rows, row bytes), float64 values
    (n_kv, rows, hd)). `spread`: a per-row factor, so block scales span decades."""
    x = (rng.standard_normal((n_kv, rows, hd)) * spread[None, :, None]).astype(np.float32)
    raw = np.ascontiguousarray(QUANTIZE[kv](x).reshape(n_kv * rows, -1))
    return raw, DEQUANT[kv](raw).reshape(n_kv, rows, hd).astype(np.float64)


def _nan_rows(raw, n_kv, cap, first, kv):
    """Rows first.. of every head: NaN blocks (scale 0x7e00), which attention must never read."""
    blocks = raw.reshape(n_kv, cap, -1, BLOCK_BYTES[kv])
    blocks[:, first:] = 0x11
    blocks[:, first:, :, 0], blocks[:, first:, :, 1] = 0x00, 0x7E


def _attend(emu, kv, q, kc, vc, n_head, n_kv, hd, tokens, pos0, cap, scale, window=0, softcap=0.0):
    """(flash_attn, attention_decode) outputs (tokens, n_head, hd), each run in both lane orders."""
    out = np.zeros((tokens, n_head * hd), np.float32)
    common = dict(n_head=n_head, n_head_kv=n_kv, head_dim=hd, pos0=pos0, kv_capacity=cap)
    common |= dict(q_stride=n_head * hd, out_stride=n_head * hd, scale=scale, window=window)
    fargs = pack(FlashAttnArgs, n_tokens=tokens, softcap=softcap, **common)
    (flash,) = run_both_orders(
        emu,
        f"flash_attn_{kv}",
        (n_head, -(-tokens // CONST["kFlashTileQ"])),
        (CONST["kFlashThreads"],),
        {0: q, 1: kc, 2: vc, 3: out.copy(), 4: fargs},
        [3],
    )
    dargs = pack(AttnArgs, softcap=softcap, **common)
    (dec,) = run_both_orders(
        emu,
        f"attention_decode_{kv}",
        (n_head, tokens),
        (CONST["kAttnSimdgroups"] * 32,),
        {0: q, 1: kc, 2: vc, 3: out.copy(), 4: dargs},
        [3],
    )
    shape = (tokens, n_head, hd)
    return flash.reshape(shape).astype(np.float64), dec.reshape(shape).astype(np.float64)


ATTN_CASES = [  # (n_head, n_kv, hd, tokens, pos0): one token; odd counts; GQA groups 1..8
    (1, 1, 32, 1, 0),
    (4, 2, 64, 1, 6),
    (9, 3, 96, 3, 37),
    (8, 1, 128, 17, 5),
    (6, 2, 32, 33, 0),
    (2, 1, 256, 2, 3),
]


@pytest.mark.parametrize("kv", QUANT_KV)
@pytest.mark.parametrize(("n_head", "n_kv", "hd", "tokens", "pos0"), ATTN_CASES)
def test_attention_reads_the_blocks(emu, kv, n_head, n_kv, hd, tokens, pos0):
    rng = np.random.default_rng(hd * 131 + tokens * 7 + pos0)
    n_ctx = pos0 + tokens
    cap = n_ctx + 3
    spread = np.geomspace(1e-2, 1e2, cap)
    rng.shuffle(spread)
    kc, k = quantized_cache(rng, n_kv, cap, hd, kv, spread * 2)
    vc, v = quantized_cache(rng, n_kv, cap, hd, kv, np.ones(cap))
    _nan_rows(kc, n_kv, cap, n_ctx, kv)  # beyond the causal window
    _nan_rows(vc, n_kv, cap, n_ctx, kv)
    q = rng.standard_normal((tokens, n_head * hd)).astype(np.float32)
    scale = 1.0 / math.sqrt(hd)
    flash, dec = _attend(emu, kv, q, kc, vc, n_head, n_kv, hd, tokens, pos0, cap, scale)
    q64 = q.astype(np.float64).reshape(tokens, n_head, hd)
    want = exact_attention(q64, k, v, pos0, scale)
    tol = flash_bound(q64, k, v, want, n_kv, hd, tokens, pos0, scale)
    assert np.all(np.abs(flash - want) <= tol), (
        f"flash: err/bound {(np.abs(flash - want) / tol).max():.3g}"
    )
    dtol = decode_bound(q64, k, v, hd, n_ctx, scale)
    assert np.all(np.abs(dec - want) <= dtol), (
        f"decode: err/bound {(np.abs(dec - want) / dtol).max():.3g}"
    )


@pytest.mark.parametrize("kv", QUANT_KV)
@pytest.mark.parametrize(("window", "softcap"), [(8, 4.0), (3, 0.0), (6, 1.5)])
def test_ring_window_and_softcap(emu, kv, window, softcap):
    """A sliding-window ring of 12 rows holding positions 23..34 (rows p % 12, wrapped twice),
    5 queries at positions 30..34 with a window (<= 12 - 5 + 1: every visible row is held) and a
    softcap. Bounds: flash_bound / decode_bound over every position (a superset of the window)
    plus the tanh evaluation, as in test_metal_emu_kernels_flash.py::test_window_and_softcap."""
    n_head, n_kv, hd, tokens, pos0, cap = 4, 2, 64, 5, 30, 12
    n_ctx = pos0 + tokens
    rng = np.random.default_rng(window)
    xk = (rng.standard_normal((n_kv, n_ctx, hd)) * 2).astype(np.float32)
    xv = rng.standard_normal((n_kv, n_ctx, hd)).astype(np.float32)
    k, v = kv_round_trip(xk, kv), kv_round_trip(xv, kv)  # by position
    rows = np.arange(n_ctx - cap, n_ctx) % cap
    kc = np.zeros((n_kv, cap, hd // 32 * BLOCK_BYTES[kv]), np.uint8)
    vc = np.zeros_like(kc)
    kc[:, rows] = QUANTIZE[kv](xk[:, n_ctx - cap :])
    vc[:, rows] = QUANTIZE[kv](xv[:, n_ctx - cap :])
    kc, vc = kc.reshape(n_kv * cap, -1), vc.reshape(n_kv * cap, -1)
    q = rng.standard_normal((tokens, n_head * hd)).astype(np.float32)
    scale = 1 / 8
    flash, dec = _attend(
        emu, kv, q, kc, vc, n_head, n_kv, hd, tokens, pos0, cap, scale, window, softcap
    )
    q64 = q.astype(np.float64).reshape(tokens, n_head, hd)
    want = windowed_attention(q64, k, v, pos0, scale, window, softcap)
    tanh_err = 8 * U * softcap * 2 * np.abs(v).max()
    tol = flash_bound(q64, k, v, want, n_kv, hd, tokens, pos0, scale) + tanh_err
    assert np.all(np.abs(flash - want) <= tol), (
        f"flash: err/bound {(np.abs(flash - want) / tol).max():.3g}"
    )
    dtol = decode_bound(q64, k, v, hd, n_ctx, scale) + tanh_err
    assert np.all(np.abs(dec - want) <= dtol), (
        f"decode: err/bound {(np.abs(dec - want) / dtol).max():.3g}"
    )


# ----------------------------------------------------------------------------- whole models

FAMILIES_HD32 = ["qwen3", "gemma3", "gemma2"]  # head_dim 32; gemma3: rings, gemma2: softcap
CONTEXT = 64


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_kvq_emu")


def _model(models_dir, family, **over) -> tm.TinyModel:
    return tm.make_model(
        models_dir, family, "f32", "gguf", tf.USUAL_TIED.get(family, False), **over
    )


def _load(m, device, kv, **kw):
    kw = {"threads": 2, "context_length": CONTEXT, **kw}
    return metallic.load(m.path, device=device, kv_cache_dtype=kv, **kw)


def _tokens(m, n, seed):
    return [int(t) for t in np.random.default_rng(seed).integers(0, m.cfg["vocab_size"], n)]


def _rel_err(got, want) -> float:
    return float(np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max())


def _float_query_attention(kv):
    """reference.causal_attention on K and V rows (float64 RoPE) round-tripped through the cache
    dtype, the query in float: what the Metal kernels compute."""
    plain = ref.causal_attention

    def attention(q, k, v, scale, *, window=None, softcap=None):
        return plain(
            q, kv_round_trip(k, kv), kv_round_trip(v, kv), scale, window=window, softcap=softcap
        )

    return attention


@emu_harness.NEEDS_EMULATOR
def test_metal_plan_takes_a_quantized_cache(models_dir):
    """The Metal plan runs a quantized cache (issue #14): the same dtype and bytes as on cpu, and a
    head_dim that is no whole number of blocks is refused as on cpu."""
    m = _model(models_dir, "qwen3")
    for kv in QUANT_KV:
        with _load(m, "metal-emulated", kv) as emu, _load(m, "cpu", kv) as cpu:
            assert emu.device == "metal-emulated"
            assert emu._engine.kv_dtype == cpu._engine.kv_dtype == KV_IDS[kv]
            assert emu._engine.kv_cache_bytes == cpu._engine.kv_cache_bytes
            assert np.isfinite(emu.logits(_tokens(m, 3, seed=1))).all()
    with pytest.raises(errors.UnsupportedDType, match=r"^\[engine\] kv_dtype Q8_0: head_dim"):
        _load(_model(models_dir, "llama"), "metal-emulated", "q8_0")  # head_dim 16


# Tolerances, relative to max |reference logit| over 24 positions (windowed layers see a full
# window of 8). Against the reference with the same K/V quantization: float32 arithmetic alone
# measures <= 4.4e-7 (the float caches' bound is TOL_F32 = 2e-5, test_metal_emu_device.py), but
# now and then a K/V element lands, in float32, on the other side of a rounding boundary than in
# the float64 reference (upstream matmul order, float RoPE angles) and moves by one quantization
# step (q8_0: amax / 127, q4_0: amax / 8 of its block) or a block scale by one fp16 ulp. Measured
# over 8 sequences x 3 families plus the ragged test's: worst 1.6e-4 (q8_0, gemma3) and 3.4e-3
# (q4_0, gemma3, one flipped code); bounds ~5x that. The quantization itself (the engine against
# the plain f32 reference) costs 9.5e-4 .. 4.4e-3 (q8_0) and 1.6e-2 .. 6.0e-2 (q4_0): the quantized
# reference must explain most of it (err < cost / 4).
# Against device="cpu" with the same dtype: both near that reference, but the cpu also quantizes
# the query to q8 blocks for its integer K dots (the Metal kernels read it in float), which is
# nearly all of their distance: err_cpu <= (cpu vs reference) + TOL_REF by the triangle
# inequality, and measured worst 3.5e-3 (q8_0) and 1.9e-2 (q4_0); KL(cpu || metal) per position
# measured worst 2.1e-4 (q8_0) and 3.8e-3 (q4_0), top-1 agreement >= 0.958.
TOL_REF = {"q8_0": 1e-3, "q4_0": 1.5e-2}
TOL_CPU = {"q8_0": 1e-2, "q4_0": 5e-2}
KL_CPU = {"q8_0": 1e-3, "q4_0": 1.5e-2}


@emu_harness.NEEDS_EMULATOR
@pytest.mark.parametrize("kv", QUANT_KV)
@pytest.mark.parametrize("family", FAMILIES_HD32)
def test_logits_match_the_reference_and_cpu(models_dir, monkeypatch, family, kv):
    """One prefill pass (flash_attn) and the same tokens one at a time (attention_decode)."""
    m = _model(models_dir, family)
    tokens = _tokens(m, 24, seed=11)
    with _load(m, "metal-emulated", kv) as emu, _load(m, "cpu", kv) as cpu:
        got = emu.logits(tokens).astype(np.float64)
        on_cpu = cpu.logits(tokens).astype(np.float64)
        e = emu._engine
        step = np.empty((len(tokens), e.n_vocab), np.float32)
        for p, t in enumerate(tokens):
            e.forward(np.asarray([t], np.int32), p, step[p : p + 1], False)
    plain = ref.forward(m.cfg, m.ref_weights, tokens)
    monkeypatch.setattr(ref, "causal_attention", _float_query_attention(kv))
    want = ref.forward(m.cfg, m.ref_weights, tokens)
    err, cost = _rel_err(got, want), _rel_err(got, plain)
    assert err <= TOL_REF[kv], (
        f"{family} {kv}: vs reference {err:.2e} (vs f32 reference {cost:.2e})"
    )
    assert err < cost / 4, (
        f"{family} {kv}: the quantization explains too little ({err:.2e}, {cost:.2e})"
    )
    err_step = _rel_err(step, want)
    assert err_step <= TOL_REF[kv], (
        f"{family} {kv}: one token at a time vs reference {err_step:.2e}"
    )
    err_cpu, cpu_ref = _rel_err(got, on_cpu), _rel_err(on_cpu, want)
    assert err_cpu <= min(TOL_CPU[kv], cpu_ref + TOL_REF[kv]), (
        f"{family} {kv}: vs cpu {err_cpu:.2e}"
    )
    kl = ref.kl_divergence(on_cpu, got)
    assert kl.max() <= KL_CPU[kv], f"{family} {kv}: KL(cpu || metal) max {kl.max():.2e}"


@emu_harness.NEEDS_EMULATOR
@pytest.mark.parametrize("kv", QUANT_KV)
def test_ragged_batch_through_the_metal_plan(models_dir, monkeypatch, kv):
    """Three sequences in ragged batches of 1..2 tokens each (the plan launches rope_kv and
    attention per sequence, core/decompose.cpp), rings of window 8 + batch 8 rows wrapping:
    every row within TOL_REF of the reference."""
    m = _model(models_dir, "gemma3")
    seqs = [_tokens(m, n, seed=20 + n) for n in (20, 5, 26)]
    monkeypatch.setattr(ref, "causal_attention", _float_query_attention(kv))
    want = [ref.forward(m.cfg, m.ref_weights, s) for s in seqs]
    with _load(m, "metal-emulated", kv, batch_size=8, parallel=3) as model:
        e = model._engine
        pos, step = [0, 0, 0], 0
        while any(p < len(s) for p, s in zip(pos, seqs, strict=True)):
            tokens, segs = [], []
            for i, s in enumerate(seqs):
                c = min(1 + (i + step) % 2, len(s) - pos[i])
                if c > 0:
                    tokens += s[pos[i] : pos[i] + c]
                    segs.append([i, c, pos[i], 1])
            e.forward_batch(np.asarray(tokens, np.int32), np.asarray(segs, np.int64))
            for j, (i, c, p0, _) in enumerate(segs):
                row = e.batch_logits()[j]
                err = _rel_err(row, want[i][p0 + c - 1])
                assert err <= TOL_REF[kv], f"{kv} seq {i} pos {p0 + c - 1}: rel err {err:.2e}"
                pos[i] += c
            step += 1
