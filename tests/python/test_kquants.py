"""Q5_0, Q5_1 and the K-quants (Q4_K, Q5_K, Q6_K) on the CPU device against NumPy references.

Dequantization must be bit exact: every value is ``scale * code (+ offset)`` where the fp16
scale times the small integer sub-block scale times the code is exact in float32 (at most
11 + 7 + 6 = 24 significant bits), so native code, ``gguf.quants.dequantize`` and
``tests/reference.py`` (float32) all round only the final offset addition, once.

Dots use the rounding bound of tests/python/test_kernels.py, per group of ``g`` weights sharing
one scale (g = 32, or 16 for Q6_K): integer sums are exact; each group adds one term through at
most 4 float32 roundings (scale * d_a, times the sum, the offset product with s = fl(d_a sum q),
the addition), and the G group terms are summed in chains of at most G plus 8 reduction levels
(accumulator merges, 8-lane horizontal sum, final offset subtraction), so
|err| <= (G + 8) U A with A = sum_g |scale_g d_a| sum_i |u_i q_i| + |off_g| |d_a sum_i q_i|, a sum
of absolute values bounding every partial sum either kernel forms (U = 2**-24).
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as GT
from gguf.quants import dequantize as gg_dequantize
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import emu_harness
import kquant_np as kq
import reference as ref
from metallic import _core

K = _core.kernels
U = 2.0**-24
TYPES = (kq.Q5_0, kq.Q5_1, kq.Q4_K, kq.Q5_K, kq.Q6_K)
KTYPES = (kq.Q4_K, kq.Q5_K, kq.Q6_K)
NAMES = {t: GT(t).name.lower() for t in (*TYPES, kq.Q8_0)}
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _tid(t: int) -> str:
    return GT(t).name


def act_q8(x: np.ndarray):
    """The engine's activation quantization (checked bit exactly in test_kernels)."""
    return K.quantize_act_q8(np.ascontiguousarray(x, np.float32).reshape(-1), False)


def reference(dtype: int, raw: np.ndarray, rows: int, cols: int, x: np.ndarray):
    """(exact float64 dot with the quantized activations, rounding bound), both (nt, rows)."""
    p = kq.decode_parts(dtype, raw, rows, cols)
    x = np.asarray(x, np.float32).reshape(-1, cols)
    q, da, _ = act_q8(x)
    nt, ng = x.shape[0], p["scale"].shape[1]
    q = q.reshape(nt, ng, -1).astype(np.float64)
    dag = np.repeat(da.reshape(nt, cols // 32).astype(np.float64), 32 // q.shape[-1], axis=1)
    exact = (q * dag[..., None]).reshape(nt, cols) @ p["w"].T
    a = np.einsum("rgi,tgi->trg", np.abs(p["u"]), np.abs(q)) * np.abs(dag[:, None, :] * p["scale"])
    a += np.abs(p["off"])[None] * np.abs(dag * q.sum(-1))[:, None, :]
    return exact, (ng + 8) * U * a.sum(-1)


def assert_within(got, exact, bound, what):
    err = np.abs(got.astype(np.float64) - exact)
    bad = np.argwhere(err > bound)
    assert bad.size == 0, (
        f"{what}: {len(bad)} off, first {tuple(bad[0])}: got {got[tuple(bad[0])]!r}, "
        f"want {exact[tuple(bad[0])]!r} +- {bound[tuple(bad[0])]!r}"
    )


def case(dtype: int, rows: int, cols: int, nt: int, seed: int):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    w *= rng.choice([1e-3, 1.0, 50.0], (rows, cols // 32)).repeat(32, axis=1)  # uneven scales
    x = rng.standard_normal((nt, cols)) * rng.choice([0.01, 1.0, 30.0], (nt, 1))
    return kq.quantize(dtype, w), x.astype(np.float32)


# ----------------------------------------------------------------------------- dequantize


@pytest.mark.parametrize("dtype", TYPES, ids=_tid)
@pytest.mark.parametrize("source", ["quantized", "random_bytes"])
def test_dequantize_bit_exact(dtype, source):
    rows, cols = 5, 512
    rng = np.random.default_rng(dtype)
    if source == "quantized":
        raw = kq.quantize(dtype, rng.standard_normal((rows, cols)).astype(np.float32) * 3)
    else:
        raw = kq.random_blocks(dtype, rows, cols, rng).reshape(-1)
    got = K.dequantize(dtype, raw, rows, cols)
    want = np.asarray(gg_dequantize(raw.reshape(rows, -1), GT(dtype)), np.float32)
    np.testing.assert_array_equal(got.view(np.uint32), want.reshape(rows, cols).view(np.uint32))
    mine = ref.dequantize(raw, NAMES[dtype], (rows, cols))
    np.testing.assert_array_equal(got.view(np.uint32), mine.view(np.uint32))
    # The structural decoder (float64): one float32 rounding away (double rounding: <= 1 ulp).
    w = kq.decode_parts(dtype, raw, rows, cols)["w"]
    np.testing.assert_allclose(got, w, rtol=2 * U, atol=0)


@pytest.fixture(scope="module")
def gemma_path():
    from conftest import _registry_file

    return _registry_file("gemma-3-270m")


@pytest.mark.parametrize("dtype", (kq.Q5_0, kq.Q4_K, kq.Q6_K, kq.Q8_0), ids=_tid)
def test_real_gemma_tensors(gemma_path, dtype):
    """A few rows of one real tensor per type of the Gemma-3-270M Q4_K_M file: dequantize bit
    exactly as gguf does, and matvec within the rounding bound (SIMD and scalar)."""
    from metallic.gguf import GGUFFile

    with GGUFFile(gemma_path) as f:
        name = next(n for n, t in f.tensors.items() if int(t.dtype) == dtype and len(t.shape) == 2)
        rows_total, cols = f.tensors[name].shape
        rows = 5
        start = rows_total // 2 - rows // 2  # middle rows (row 0 of token_embd is padding)
        rb = f.tensors[name].nbytes // rows_total
        raw = np.array(f.data(name)[start * rb : (start + rows) * rb])
    got = K.dequantize(dtype, raw, rows, cols)
    want = np.asarray(gg_dequantize(raw.reshape(rows, -1), GT(dtype)), np.float32)
    np.testing.assert_array_equal(got.view(np.uint32), want.reshape(rows, cols).view(np.uint32))
    assert np.abs(got).max() > 0, f"{name}: all-zero rows prove nothing"
    x = np.random.default_rng(0).standard_normal((3, cols)).astype(np.float32)
    exact, bound = reference(dtype, raw, rows, cols, x)
    for simd in (True, False):
        assert_within(K.matvec(dtype, raw, rows, cols, x, simd), exact, bound, f"{name} {simd=}")


# ----------------------------------------------------------------------------- matvec / matmul

SHAPES = [(1, 256), (3, 256), (7, 512), (2, 2816), (2, 8192), (301, 256)]
CASES = [(t, r, c) for t in TYPES for r, c in SHAPES]
CASES += [(t, r, c) for t in (kq.Q5_0, kq.Q5_1) for r, c in [(1, 32), (5, 96), (3, 640)]]


def _cid(c):
    return f"{_tid(c[0])}-{c[1]}x{c[2]}"


@pytest.mark.parametrize("c", CASES, ids=_cid)
@pytest.mark.parametrize("nt", [1, 3])
def test_matvec_vs_numpy(c, nt):
    dtype, rows, cols = c
    raw, x = case(dtype, rows, cols, nt, seed=rows * 7 + cols + nt)
    exact, bound = reference(dtype, raw, rows, cols, x)
    outs = {}
    for simd in (True, False):
        outs[simd] = K.matvec(dtype, raw, rows, cols, x, simd)
        assert outs[simd].shape == (nt, rows) and outs[simd].dtype == np.float32
        assert_within(outs[simd], exact, bound, f"matvec simd={simd}")
    assert_within(outs[True], outs[False].astype(np.float64), 2 * bound, "simd vs scalar")


@pytest.mark.parametrize("c", [c for c in CASES if c[2] <= 2816], ids=_cid)
@pytest.mark.parametrize(
    "nt", [1, 4, 6, 9]
)  # 4-token passes, a remainder; >= 8 tokens quantize in parallel
def test_matmul_threads_vs_numpy(c, nt):
    dtype, rows, cols = c
    raw, x = case(dtype, rows, cols, nt, seed=rows + cols * 3 + nt)
    exact, bound = reference(dtype, raw, rows, cols, x)
    first = None
    for threads in (1, 2, 3):
        got = K.matmul(dtype, raw, rows, cols, x, threads)
        assert_within(got, exact, bound, f"matmul threads={threads}")
        if first is None:
            first = got
        np.testing.assert_array_equal(got, first)  # rows split across threads: same bits


@pytest.mark.parametrize("dtype", TYPES, ids=_tid)
def test_random_bytes_matvec(dtype):
    """Arbitrary codes and scales (subnormal to 6e4), including x4 (prefill) vs single passes."""
    rng = np.random.default_rng(100 + dtype)
    rows, cols, nt = 9, 768, 5
    raw = kq.random_blocks(dtype, rows, cols, rng).reshape(-1)
    x = rng.standard_normal((nt, cols)).astype(np.float32)
    exact, bound = reference(dtype, raw, rows, cols, x)
    for simd in (True, False):
        assert_within(K.matvec(dtype, raw, rows, cols, x, simd), exact, bound, f"{simd=}")
    assert_within(K.matmul(dtype, raw, rows, cols, x, 2), exact, bound, "matmul x4")


@FAST
@given(
    dtype=st.sampled_from(TYPES),
    rows=st.integers(1, 9),
    nsb=st.integers(1, 4),
    nt=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
    scale=st.sampled_from([1e-6, 1.0, 1e4]),
)
def test_matvec_property(dtype, rows, nsb, nt, seed, scale):
    cols = nsb * 256 if dtype in KTYPES else nsb * 32 * (1 + seed % 3)
    raw, x = case(dtype, rows, cols, nt, seed)
    x = (x * np.float32(scale)).astype(np.float32)
    exact, bound = reference(dtype, raw, rows, cols, x)
    for simd in (True, False):
        assert_within(K.matvec(dtype, raw, rows, cols, x, simd), exact, bound, f"simd={simd}")
    assert_within(K.matmul(dtype, raw, rows, cols, x, 2), exact, bound, "matmul")


def test_shape_errors():
    from metallic import errors

    raw, x = case(kq.Q4_K, 2, 256, 1, seed=0)
    with pytest.raises(errors.ShapeMismatch, match=r"^\[kernels.matvec\]"):
        K.matvec(kq.Q4_K, raw, 2, 128, x[:, :128])  # 128 is not a multiple of 256
    with pytest.raises(errors.ShapeMismatch, match=r"^\[kernels.matmul\]"):
        K.matmul(kq.Q6_K, raw[:-1], 2, 256, x)


# ----------------------------------------------------------------------------- quantizers


# R: how many aimed steps t a group's farthest value lies from its zero point. Q6_K aims
# t = max|x| / 31.5 (codes - 32 in -32..31); Q4_K / Q5_K t = (max x - lo) / L over codes 0..L,
# lo = min(min x, 0), so max x + mn lies L t + (lo + mn) above code 0.
REACH = {kq.Q4_K: 15, kq.Q5_K: 31, kq.Q6_K: 31.5}


def check_kquant_np(dtype: int, x: np.ndarray) -> np.ndarray:
    """Quantize x (rows, cols) with kquant_np: blocks gguf decodes as decode_parts does, and per
    group |w - x| <= s/2 + R d/2 + dmin/2 (s the group's scale, d / dmin its super-block's fp16
    units as stored, R = REACH). Returns the decoded values.

    Derivation: the quantizer rounds s to the nearest multiple of d and the min mn = -off to the
    nearest multiple of dmin, never clipping either (kquant_np._grid_scale picks d so the largest
    int fits), so |s - t| <= d/2 and |mn + lo| <= dmin/2; the fp16 rounding of d and dmin
    themselves (subnormal ones included) moves no bound, as d and dmin are read back. A code
    rounded inside its range errs by <= s/2. Clipped codes: Q6_K at 31, x - 31 s <= 31.5 t - 31 s
    = 31.5 (t - s) + s/2; at -32, |x| - 32 s <= 31.5 (t - s) - s/2; s = 0, |x| <= 31.5 t <= 31.5
    d/2. Q4_K / Q5_K at L, x + mn - L s <= L t + lo + mn - L s = L (t - s) + (lo + mn); at 0,
    -mn - x <= -(lo + mn); s = 0 (t <= d/2), both of those with s = 0. Each is within
    s/2 + R d/2 + dmin/2. Slack 1e-12 relative: float64 evaluation of exact float32 inputs
    (a few roundings of 2**-53)."""
    rows, cols = x.shape
    raw = kq.quantize(dtype, x)
    p = kq.decode_parts(dtype, raw, rows, cols)
    gg = np.asarray(gg_dequantize(raw.reshape(rows, -1), GT(dtype)), np.float64)
    np.testing.assert_allclose(gg.reshape(rows, cols), p["w"], rtol=2 * U, atol=0)
    xs = x.reshape(p["u"].shape).astype(np.float64)
    bound = np.abs(p["scale"]) / 2 + REACH[dtype] * p["grid"] / 2 + p["grid_m"] / 2
    err = np.abs(p["w"].reshape(xs.shape) - xs).max(-1)
    bad = np.argwhere(err > bound * (1 + 1e-12))
    assert bad.size == 0, (
        f"group {tuple(bad[0])}: err {err[tuple(bad[0])]!r} > {bound[tuple(bad[0])]!r}"
    )
    return p["w"]


@FAST
@given(
    dtype=st.sampled_from(KTYPES),
    rows=st.integers(1, 3),
    seed=st.integers(0, 2**32 - 1),
    spread=st.sampled_from([1e-3, 1.0, 1e3]),
)
# A super-block of ~1e-3 values: Q6_K's d = fp16(1.1457e-4 / 127) is subnormal and rounded to
# 15 * 2**-24 (15.13 wanted); the largest group's int round(128.1) used to be clipped to 127.
@example(dtype=kq.Q6_K, rows=3, seed=40, spread=1e-3)
def test_kquant_np_quantizers(dtype, rows, seed, spread):
    """Valid blocks that approximate the input within check_kquant_np's bound (half a step plus
    the rounding of the group's scale and min to the super-block grid, times the reach)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, 512)) * rng.choice([spread, 1.0], (rows, 16)).repeat(32, 1)
    x = x.astype(np.float32)
    w = check_kquant_np(dtype, x)
    rms = np.sqrt(np.mean((w - x) ** 2) / np.mean(x.astype(np.float64) ** 2))
    assert spread != 1.0 or rms < {kq.Q4_K: 0.15, kq.Q5_K: 0.08, kq.Q6_K: 0.05}[dtype], rms


@pytest.mark.parametrize("dtype", KTYPES, ids=_tid)
@pytest.mark.parametrize("mag", [3e-2, 1e-3, 1e-5, 1e-7, 0.0])
def test_kquant_np_tiny_superblocks(dtype, mag):
    """Whole super-blocks of tiny values put d (and dmin) among the fp16 subnormals (spacing
    2**-24), or below them (1e-5: Q6_K's d would round to 0 and zero every value); the bound
    still holds, and values that d = 2**-24 can resolve (1e-5) come back, not zeros."""
    rng = np.random.default_rng(int(dtype))
    x = rng.standard_normal((4, 512)) * rng.choice([0.1, 1.0], (4, 16)).repeat(32, 1) * mag
    x = x.astype(np.float32)
    w = check_kquant_np(dtype, x)
    assert mag != 1e-5 or np.abs(w).max() > 0


# ----------------------------------------------------------------------------- end to end

MIX = {  # Q4_K_M-like: GGUF name part -> storage
    "attn_q": "q4_k",
    "attn_k": "q4_k",
    "attn_output": "q4_k",
    "ffn_gate": "q4_k",
    "ffn_up": "q5_0",
    "attn_v": "q6_k",
    "ffn_down": "q6_k",
    "token_embd": "q6_k",
    "output": "q8_0",
}


def _tiny_q4_k_m(tmp_path, monkeypatch):
    """A tiny llama GGUF with a Q4_K_M-like mix of Q4_K, Q6_K, Q5_0 and Q8_0 tensors:
    (path, cfg, reference weights dequantized, dtypes)."""
    import tiny_models as tm

    sizes = {"hidden_size": 256, "intermediate_size": 512, "head_dim": 64, "num_attention_heads": 4}
    sizes |= {"num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 333}
    cfg = tm.make_config("llama", False, "f32", **sizes)
    tok_json = tm.trained_tokenizer_json("llama", cfg["vocab_size"])
    stored, ref_w, dtypes = {}, {}, {}
    ids = {"q4_k": kq.Q4_K, "q6_k": kq.Q6_K, "q5_0": kq.Q5_0, "q8_0": kq.Q8_0}
    for name, values in tm.random_hf_weights(cfg, seed=3).items():
        dt = MIX[tm.gguf_name(name).split(".")[-2]] if values.ndim == 2 else "f32"
        if dt == "f32":
            stored[name], ref_w[name] = tm.store(values, "f32")
        else:
            raw = kq.quantize(ids[dt], values).reshape(values.shape[0], -1)
            stored[name], ref_w[name] = raw, ref.dequantize(raw, dt, values.shape)
        dtypes[name] = dt
    # _write_gguf looks each tensor's raw GGML type up in tm.STORAGE
    monkeypatch.setattr(tm, "STORAGE", tm.STORAGE | {d: GT(i) for d, i in ids.items()})
    path = tmp_path / "tiny-q4_k_m.gguf"
    tm._write_gguf(path, cfg, stored, dtypes, tok_json)
    return path, cfg, ref_w, dtypes


def test_tiny_q4_k_m_model_matches_reference(tmp_path, monkeypatch):
    """A tiny llama with a Q4_K_M-like mix of Q4_K, Q6_K, Q5_0 and Q8_0 tensors: engine logits
    vs the float64 reference on the same dequantized weights with act_quant. Tolerances as in
    test_model_forward (TOL_FLIP / KL_FLIP: int8 activation rounding flips); short prompts rarely
    flip, so at least 6 of their 8 comparisons must also meet the strict f32 tolerance 2e-5
    (measured: 8 of 8, worst 3e-7; 40 tokens: 8.5e-3, mean KL 2.7e-4)."""
    import metallic

    path, cfg, ref_w, dtypes = _tiny_q4_k_m(tmp_path, monkeypatch)
    rng = np.random.default_rng(7)
    strict = 0
    with metallic.load(
        path, device="cpu", threads=2, context_length=64, kv_cache_dtype="f32"
    ) as model:
        for n in (1, 1, 1, 1, 7, 7, 7, 7, 40, 40):
            tokens = [int(t) for t in rng.integers(0, cfg["vocab_size"], n)]
            got = model.logits(tokens)
            want = ref.forward(cfg, ref_w, tokens, act_quant=dtypes)
            err = float(np.abs(got - want).max() / np.abs(want).max())
            kl = float(ref.kl_divergence(want, got).mean())
            assert err <= 4e-2 and kl <= 1.5e-3, f"n={n}: rel err {err:.2e}, mean KL {kl:.2e}"
            strict += n < 40 and err <= 2e-5
    assert strict >= 6, f"only {strict}/8 short prompts within 2e-5"


@emu_harness.NEEDS_EMULATOR
def test_tiny_q4_k_m_model_on_metal_emulated(tmp_path, monkeypatch):
    """The same Q4_K_M-like model through the Metal kernels (device="metal-emulated": K-quant and
    Q5_0 gemv, fused norm kernels, gemm and flash attention for the 7- and 40-token prefills,
    Q6_K embedding). The GPU path does not quantize activations, so it is compared with the
    reference without act_quant: float32 rounding only. Dots run over <= 512 terms (the FFN
    width): <= 512 u = 3.1e-5 of the term magnitudes worst case, plus a few u for norms, RoPE and
    softmax: TOL = 4e-5 relative to max|logit|."""
    import metallic

    path, cfg, ref_w, _ = _tiny_q4_k_m(tmp_path, monkeypatch)
    rng = np.random.default_rng(7)
    with metallic.load(
        path, device="metal-emulated", threads=2, context_length=64, kv_cache_dtype="f32"
    ) as model:
        for n in (1, 7, 40):
            tokens = [int(t) for t in rng.integers(0, cfg["vocab_size"], n)]
            got = model.logits(tokens)
            want = ref.forward(cfg, ref_w, tokens, act_quant=None)
            err = float(np.abs(got - want).max() / np.abs(want).max())
            assert err <= 4e-5, f"n={n}: rel err {err:.2e}"


# ----------------------------------------------------------------------------- repacked Q5_0 / Q4_K

# rows: one group, a group + tail, many groups, a large odd count; cols: 1, 3 and many blocks.
REPACK_CASES = [
    (t, r, c) for t in (kq.Q5_0, kq.Q5_1) for r, c in [(8, 32), (13, 96), (64, 640), (1001, 64)]
]
REPACK_CASES += [
    (t, r, c)
    for t in (kq.Q4_K, kq.Q5_K, kq.Q6_K)
    for r, c in [(8, 256), (13, 768), (64, 2816), (1001, 256)]
]


@pytest.mark.skipif(not K.simd_available(), reason="repacking needs the AVX2 kernels")
@pytest.mark.parametrize("c", REPACK_CASES, ids=_cid)
@pytest.mark.parametrize("nt", [1, 2, 3, 5, 6, 7, 9, 15])
def test_repacked_matmul_vs_numpy(c, nt):
    """Q5_0, Q5_1, Q4_K, Q5_K and Q6_K repacked into 8-row interleaved blocks (cpu/repack.h
    BlockQ5_0x8 / Q5_1x8: Q4_0's nibble chunks plus the fifth bits as bit planes; BlockQ4_Kx8:
    scales and mins unpacked per sub-block, nibbles chunked per pair of sub-blocks; BlockQ5_Kx8:
    plus the fifth bits as bit planes; BlockQ6_Kx8: ql / qh chunked per half, unpacked to signed
    q - 32 with the sign moved onto the activation bytes): rows not a multiple of 8 (a row-major
    tail), 1..15 tokens (4-token tiles and a tile of the 1..3 left), within the row-major rounding
    bound (each sub-block term is an exact integer sum times one scale; the same (ng + 8) U A
    argument), and each token bit-identical to its own single-token pass (batch invariance)."""
    dtype, rows, cols = c
    raw, x = case(dtype, rows, cols, nt, seed=rows * 5 + nt)
    exact, bound = reference(dtype, raw, rows, cols, x)
    got = K.matmul(dtype, raw, rows, cols, x, 2, repack=True)
    assert_within(got, exact, bound, f"repacked {_cid(c)} nt={nt}")
    single = [K.matmul(dtype, raw, rows, cols, x[i : i + 1], 2, repack=True)[0] for i in range(nt)]
    np.testing.assert_array_equal(got, np.stack(single))


@pytest.mark.skipif(not K.simd_available(), reason="repacking needs the AVX2 kernels")
@pytest.mark.parametrize("dtype", [kq.Q5_0, kq.Q5_1, kq.Q4_K, kq.Q5_K, kq.Q6_K], ids=_tid)
@pytest.mark.parametrize("rows", [8, 13, 1001])
def test_embedding_rows_from_repacked_table_are_exact(dtype, rows):
    cols = 256
    raw, _ = case(dtype, rows, cols, 1, seed=rows)
    ids = np.array([0, rows - 1, rows // 2, min(7, rows - 1), rows - 1 - rows % 8], np.int32)
    want = gg_dequantize(raw.reshape(rows, -1), GT(dtype)).astype(np.float32)[ids]
    np.testing.assert_array_equal(K.embed(dtype, raw, rows, cols, ids, repack=True), want)
