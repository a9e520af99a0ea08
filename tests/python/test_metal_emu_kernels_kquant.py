"""gemv_* and embed_* for Q5_0, Q5_1, Q4_K, Q5_K, Q6_K (shaders/quant_k.h) on the Metal emulator.

Blocks come from tests/kquant_np.py (``quantized``: the numpy quantizers on Gaussian rows with
uneven scales) or are random bytes with finite fp16 scales (``random``: every code, every packed
K-quant scale byte, subnormal and huge fp16 scales).

embed: bit-exact with gguf's float32 dequantization. Each value is scale * code (+ offset), the
product of the fp16 scale, the integer (sub-)block scale and the code is exact in float32 (at most
11 + 7 + 6 = 24 significant bits), so both sides round only the offset addition, once, in any
evaluation order; the embedding scale 0.5 is exact.

gemv: against the float64 product of the dequantized weights (``kq.decode_parts``). Each weight
splits into scale_g * u_i + off_g for its group g (32 values; 16 for Q6_K) exactly as the kernel
splits it. The computed result is a sum of leaf terms scale_g u_i x_i and off_g x_i (plus bias and
the residual) each multiplied by (1 + delta) for every float32 rounding on its way to the output,
|delta| <= U = 2**-24, so |err| <= gamma(n) * A with gamma(n) = n U / (1 - n U),
A = sum |leaf terms| and n the longest chain of roundings a leaf passes through (a fused
multiply-add only removes roundings):
  n = D (inside Fmt::dot, per format, see DOT_DEPTH) + (nbl - 1) (the lane's running sum over
      its nbl blocks; the first addition to 0 is exact) + (min(nb, 32) - 1) (simd_sum over the
      lanes that hold a block: any reduction tree of k non-zero terms has depth <= k - 1)
      + 2 (the bias addition and the residual addition).
The float64 reference itself is within about cols * 2**-53 * A, negligible against gamma(n) * A.
Every dispatch also runs with reversed lane order and must be bit-identical.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as GT
from gguf.quants import dequantize as gg_dequantize

import kquant_np as kq
from emu_harness import (
    CONST,
    EmbedArgs,
    GemvArgs,
    pack,
    run_both_orders,
)

U = 2.0**-24
NAMES = {kq.Q5_0: "q5_0", kq.Q5_1: "q5_1", kq.Q4_K: "q4_k", kq.Q5_K: "q5_k", kq.Q6_K: "q6_k"}
TYPES = tuple(NAMES)
# Roundings a leaf term passes through inside Fmt<W>::dot (shaders/quant_k.h):
#   Q5_0: product code*x, pair sum, chain of 16 pairs, * d                          = 19
#   Q5_1: as Q5_0 then + m * sx (the sx leaves: pair, chain 16, * m, +)             = 20
#   Q4_K/Q5_K: product, pair, chain 16, * sc, pair, chain 4, * d (or dmin), -       = 26
#   Q6_K: product, pair, chain 8, * sc, chain of 16 group terms, * d                = 28
DOT_DEPTH = {kq.Q5_0: 19, kq.Q5_1: 20, kq.Q4_K: 26, kq.Q5_K: 26, kq.Q6_K: 28}
FOLDED = (kq.Q5_0, kq.Q6_K)  # the offset (-16 / -32) is folded into the integer code


def _tid(t: int) -> str:
    return GT(t).name


def make_blocks(dtype: int, rows: int, cols: int, source: str, rng) -> np.ndarray:
    if source == "random":
        return kq.random_blocks(dtype, rows, cols, rng)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    w *= rng.choice([1e-3, 1.0, 50.0], (rows, cols // 32)).repeat(32, axis=1)  # uneven scales
    return np.ascontiguousarray(kq.quantize(dtype, w).reshape(rows, -1))


def leaf_sum(dtype: int, raw: np.ndarray, rows: int, cols: int, x: np.ndarray):
    """(float64 weights (rows, cols), A (tokens, rows) = sum of |leaf terms| of the dot)."""
    p = kq.decode_parts(dtype, raw, rows, cols)
    ax = np.abs(x.astype(np.float64))
    if dtype in FOLDED:  # leaves are w_i x_i themselves
        return p["w"], ax @ np.abs(p["w"]).T
    g = p["u"].shape[-1]
    axg = ax.reshape(len(x), -1, g)
    a = np.einsum("rg,rgi,tgi->tr", np.abs(p["scale"]), np.abs(p["u"]), axg)
    a += np.einsum("rg,tg->tr", np.abs(p["off"]), axg.sum(-1))
    return p["w"], a


def run_gemv(emu, dtype, raw, x, bias, acc0, accumulate: int, has_bias: int):
    rows, cols, tokens = raw.shape[0], x.shape[1], x.shape[0]
    out = acc0.copy()
    args = pack(
        GemvArgs, rows=rows, cols=cols, row_bytes=raw.shape[1], x_stride=cols, out_stride=rows
    )
    args["accumulate"], args["has_bias"] = accumulate, has_bias
    groups = (-(-rows // CONST["kGemvRowsPerGroup"]), tokens)
    threads = (CONST["kGemvSimdgroups"] * 32,)
    bufs = {0: raw, 1: x, 2: bias, 3: out, 4: args}
    (got,) = run_both_orders(emu, f"gemv_{NAMES[dtype]}", groups, threads, bufs, [3])
    return got


def check_gemv(emu, dtype, raw, x, rng, what):
    """Both epilogues (plain store; bias + residual add) within the derived bound."""
    rows, cols = raw.shape[0], x.shape[1]
    w, a = leaf_sum(dtype, raw, rows, cols, x)
    nb = cols // kq.BLOCK[dtype][0]
    n = DOT_DEPTH[dtype] + (-(-nb // 32) - 1) + (min(nb, 32) - 1) + 2
    gamma = n * U / (1 - n * U)
    bias = rng.standard_normal(rows).astype(np.float32)
    acc0 = rng.standard_normal((len(x), rows)).astype(np.float32)
    scale = np.abs(a).max()  # bias / residual in proportion to the products
    bias, acc0 = (bias * scale).astype(np.float32), (acc0 * scale).astype(np.float32)
    for accumulate, has_bias in [(0, 0), (1, 1)]:
        got = run_gemv(emu, dtype, raw, x, bias, acc0, accumulate, has_bias)
        ref = x.astype(np.float64) @ w.T
        tol = gamma * a
        if accumulate:
            ref = ref + acc0.astype(np.float64) + bias.astype(np.float64)
            tol = gamma * (a + np.abs(acc0) + np.abs(bias))
        err = np.abs(got.astype(np.float64) - ref)
        assert np.all(np.isfinite(got)), f"{what}: non-finite output"
        bad = np.argwhere(err > tol)
        assert bad.size == 0, (
            f"{what} acc={accumulate}: {len(bad)} off, first {tuple(bad[0])}: got "
            f"{got[tuple(bad[0])]!r}, want {ref[tuple(bad[0])]!r} +- {tol[tuple(bad[0])]!r}"
        )


def run_embed(emu, dtype, table: np.ndarray, cols: int, tokens: np.ndarray) -> np.ndarray:
    out = np.zeros((len(tokens), cols), np.float32)
    args = pack(EmbedArgs, cols=cols, row_bytes=table.shape[1], out_stride=cols, scale=0.5)
    groups = (-(-cols // CONST["kElementwiseThreads"]), len(tokens))
    bufs = {0: table, 1: tokens, 2: out, 3: args}
    threads = (CONST["kElementwiseThreads"],)
    (got,) = run_both_orders(emu, f"embed_{NAMES[dtype]}", groups, threads, bufs, [2])
    return got


def check_embed(emu, dtype, table: np.ndarray, cols: int, tokens: np.ndarray, what: str):
    got = run_embed(emu, dtype, table, cols, tokens)
    deq = np.asarray(gg_dequantize(table, GT(dtype)), np.float32).reshape(len(table), cols)
    want = (deq[tokens] * np.float32(0.5)).astype(np.float32)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32), err_msg=what)


def test_library_lists_every_format(emu):
    want = {f"{k}_{n}" for k in ("gemv", "embed") for n in NAMES.values()}
    assert want <= set(emu.kernels)


# ----------------------------------------------------------------------------- embed


def _embed_cols(dtype: int) -> list[int]:
    elems = kq.BLOCK[dtype][0]
    return [elems, 3 * elems] + ([576] if elems == 32 else [])


EMBED_CASES = [(t, c) for t in TYPES for c in _embed_cols(t)]


@pytest.mark.parametrize("source", ["quantized", "random"])
@pytest.mark.parametrize(
    ("dtype", "cols"), EMBED_CASES, ids=[f"{_tid(t)}-{c}" for t, c in EMBED_CASES]
)
def test_embed(emu, dtype, cols, source):
    rng = np.random.default_rng(cols * 100 + dtype)
    vocab = 11
    table = make_blocks(dtype, vocab, cols, source, rng)
    tokens = np.array([0, 10, 3, 3, 7], np.int32)
    check_embed(emu, dtype, table, cols, tokens, f"embed_{NAMES[dtype]} {source} cols={cols}")


# ----------------------------------------------------------------------------- gemv


def _gemv_shapes(dtype: int) -> list[tuple[int, int]]:
    elems = kq.BLOCK[dtype][0]
    cols = [elems, 3 * elems] + ([576] if elems == 32 else [])
    shapes = [(r, c) for r in (1, 3, 64, 65) for c in cols]
    return shapes + [(3, 33 * elems)]  # 33 blocks: lane 0 walks two blocks of the row


GEMV_CASES = [(t, r, c) for t in TYPES for r, c in _gemv_shapes(t)]


@pytest.mark.parametrize("source", ["quantized", "random"])
@pytest.mark.parametrize("tokens", [1, 3])
@pytest.mark.parametrize(
    ("dtype", "rows", "cols"), GEMV_CASES, ids=[f"{_tid(t)}-{r}x{c}" for t, r, c in GEMV_CASES]
)
def test_gemv(emu, dtype, rows, cols, tokens, source):
    rng = np.random.default_rng(rows * 1000 + cols + dtype)
    raw = make_blocks(dtype, rows, cols, source, rng)
    x = rng.standard_normal((tokens, cols)) * rng.choice([0.01, 1.0, 30.0], (tokens, 1))
    what = f"gemv_{NAMES[dtype]} {source} {rows}x{cols} tokens={tokens}"
    check_gemv(emu, dtype, raw, x.astype(np.float32), rng, what)


def test_gemv_exact_on_integer_activations(emu):
    """Q6_K with d = 1 and small integer activations: every float32 operation is exact, so a
    wrong code, scale or group index cannot hide inside a rounding bound."""
    rng = np.random.default_rng(5)
    rows, cols = 7, 512
    raw = kq.random_blocks(kq.Q6_K, rows, cols, rng).reshape(rows, -1, 210)
    raw[..., 208:210] = np.frombuffer(np.float16(1.0).tobytes(), np.uint8)
    raw = np.ascontiguousarray(raw.reshape(rows, -1))
    x = rng.integers(-4, 5, (2, cols)).astype(np.float32)
    w = kq.decode_parts(kq.Q6_K, raw, rows, cols)["w"]
    zeros = np.zeros((2, rows), np.float32)
    got = run_gemv(emu, kq.Q6_K, raw, x, zeros[0], zeros, 0, 0)
    np.testing.assert_array_equal(got, (x.astype(np.float64) @ w.T).astype(np.float32))


# ----------------------------------------------------------------------------- real tensors


@pytest.fixture(scope="module")
def gemma_path():
    from conftest import _registry_file

    return _registry_file("gemma-3-270m")


@pytest.mark.parametrize("dtype", (kq.Q5_0, kq.Q4_K, kq.Q6_K), ids=_tid)
def test_real_gemma_tensors(emu, gemma_path, dtype):
    """Five middle rows of one real tensor per format of the Gemma-3-270M Q4_K_M file: embed
    bit-exact with gguf, gemv within the derived bound."""
    from metallic.gguf import GGUFFile

    with GGUFFile(gemma_path) as f:
        name = next(n for n, t in f.tensors.items() if int(t.dtype) == dtype and len(t.shape) == 2)
        rows_total, cols = f.tensors[name].shape
        rows = 5
        start = rows_total // 2 - rows // 2  # middle rows (row 0 of token_embd is padding)
        rb = f.tensors[name].nbytes // rows_total
        raw = np.array(f.data(name)[start * rb : (start + rows) * rb]).reshape(rows, rb)
    deq = np.asarray(gg_dequantize(raw, GT(dtype)), np.float32)
    assert np.abs(deq).max() > 0, f"{name}: all-zero rows prove nothing"
    check_embed(emu, dtype, raw, cols, np.array([4, 0, 2], np.int32), f"embed {name}")
    x = np.random.default_rng(0).standard_normal((3, cols)).astype(np.float32)
    check_gemv(emu, dtype, raw, x, np.random.default_rng(1), f"gemv {name}")
