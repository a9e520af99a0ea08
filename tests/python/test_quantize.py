"""Load-time quantization (src/metallic/quantize.py, native/cpu/quantize.cpp): bit-exact with
the GGML reference quantizers (gguf.quants), and the logit drift it costs on a tiny model."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as GT
from gguf.quants import quantize as gg_quantize
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from metallic import _core, errors
from metallic.dtypes import DType
from metallic.quantize import check_target, quantize_weights

K = _core.kernels


def _raw(x: np.ndarray, src: DType) -> np.ndarray:
    if src == DType.F32:
        return x.astype(np.float32).view(np.uint8).reshape(-1)
    if src == DType.F16:
        return x.astype(np.float16).view(np.uint8).reshape(-1)
    return (x.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(-1)


def _as_f32(x: np.ndarray, src: DType) -> np.ndarray:
    """The float32 values the quantizer sees (F16 / BF16 widen exactly)."""
    if src == DType.F32:
        return x.astype(np.float32)
    if src == DType.F16:
        return x.astype(np.float16).astype(np.float32)
    return ((x.astype(np.float32).view(np.uint32) >> 16) << 16).view(np.float32)


@pytest.mark.parametrize("src", [DType.F32, DType.F16, DType.BF16])
@pytest.mark.parametrize("dst", [DType.Q8_0, DType.Q4_0])
@pytest.mark.parametrize("rows, cols", [(1, 32), (7, 96), (300, 576)])
def test_bit_exact_with_ggml_reference(src, dst, rows, cols):
    rng = np.random.default_rng(rows + cols)
    x = rng.standard_normal((rows, cols)) * rng.choice([1e-3, 1.0, 50.0], (rows, 1))
    x[0, :32] = 0.0  # an all-zero block
    got = K.quantize(int(src), _raw(x, src), rows, cols, int(dst), 2, "w")
    want = gg_quantize(_as_f32(x, src), GT(int(dst))).reshape(-1)
    np.testing.assert_array_equal(got, want)


@settings(max_examples=60, deadline=None)
@given(
    x=hnp.arrays(
        np.float32,
        st.sampled_from([(1, 32), (2, 64)]),
        elements=st.floats(-1e4, 1e4, width=32, allow_subnormal=False),
    ),
    dst=st.sampled_from([DType.Q8_0, DType.Q4_0]),
)
def test_bit_exact_property(x, dst):
    got = K.quantize(int(DType.F32), _raw(x, DType.F32), x.shape[0], x.shape[1], int(dst), 1, "w")
    np.testing.assert_array_equal(got, gg_quantize(x, GT(int(dst))).reshape(-1))


def test_non_finite_weight_is_corrupt_file():
    x = np.ones((2, 32), np.float32)
    x[1, 5] = np.nan
    with pytest.raises(
        errors.CorruptFile, match=r"blk\.0\.attn_q\.weight: non-finite weight in row 1"
    ):
        K.quantize(
            int(DType.F32), _raw(x, DType.F32), 2, 32, int(DType.Q8_0), 1, "blk.0.attn_q.weight"
        )


@pytest.mark.parametrize(
    "src, dst, cols, cls",
    [
        (DType.Q8_0, DType.Q4_0, 32, errors.UnsupportedDType),
        (DType.F32, DType.Q4_1, 32, errors.UnsupportedDType),
        (DType.F32, DType.Q8_0, 40, errors.ShapeMismatch),
    ],
)
def test_quantize_rejects(src, dst, cols, cls):
    raw = np.zeros(34 if src == DType.Q8_0 else cols * 4, np.uint8)
    with pytest.raises(cls):
        K.quantize(int(src), raw, 1, cols, int(dst), 1, "w")


def test_check_target():
    assert check_target(None) is None
    assert check_target("Q8_0") == DType.Q8_0 and check_target("q4_0") == DType.Q4_0
    for bad in ("q4_1", "int8", 8):
        with pytest.raises(errors.InvalidArgument, match="quantize"):
            check_target(bad)


def test_quantize_weights_keeps_vectors_and_odd_rows():
    f = np.zeros(64 * 4, np.uint8)
    weights = {
        "blk.0.attn_q.weight": (DType.F32, (2, 32), np.zeros(2 * 32 * 4, np.uint8)),
        "blk.0.attn_norm.weight": (DType.F32, (64,), f),
        "odd.weight": (DType.F16, (2, 40), np.zeros(2 * 40 * 2, np.uint8)),
    }
    out, n = quantize_weights(weights, DType.Q8_0)
    assert n == 1
    assert (
        out["blk.0.attn_q.weight"][0] == DType.Q8_0 and out["blk.0.attn_q.weight"][2].nbytes == 68
    )
    assert out["blk.0.attn_norm.weight"][2] is f and out["odd.weight"][0] == DType.F16
