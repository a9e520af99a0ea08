"""The Metal emulator's simdgroup_matrix (native/metal_emu/metal_stdlib) against NumPy: every
operation once (tests/metal_ops/simdgroup_matrix.metal), on small integers so every float and
half operation is exact and the results must match bit for bit, under both lane orders.
The checks for misuse (divergent calls, missing lanes, non-uniform pointers) are in
test_metal_emu_broken.py."""

from __future__ import annotations

import numpy as np
import pytest

from emu_harness import ERR_KERNEL, NEEDS_CLANG, ROOT, EmuError, EmuLib, build

OPS = ROOT / "tests" / "metal_ops"

pytestmark = NEEDS_CLANG


@pytest.fixture(scope="module")
def ops(tmp_path_factory) -> EmuLib:
    out = tmp_path_factory.mktemp("emu_ops") / "libsgm_ops.so"
    return EmuLib(build(out, [OPS], headers=[ROOT / "shaders"]))


def test_simdgroup_matrix_operations(ops):
    rng = np.random.default_rng(3)
    s = rng.integers(-4, 5, (16, 16)).astype(np.float32)
    hs = rng.integers(-4, 5, (16, 16)).astype(np.float16)
    sentinel = np.float32(-99.0)
    results = []
    for reverse in (False, True):
        out = np.full(7 * 64 + 16 * 16 - 64, sentinel, np.float32)
        hout = np.zeros(64, np.float16)
        bufs = {0: s.copy(), 1: hs.copy(), 2: out, 3: hout}
        ops.dispatch("sgm_ops", (1,), (32,), bufs, reverse=reverse)
        results.append((out, hout))
    (out, hout), (out_r, hout_r) = results
    np.testing.assert_array_equal(out, out_r, err_msg="depends on lane order")
    np.testing.assert_array_equal(hout, hout_r, err_msg="depends on lane order")
    r = out[:384].reshape(6, 8, 8)
    m0, m1, m2 = s[0:8, 0:8], s[5:13, 3:11], s[0:8, 8:16].T
    np.testing.assert_array_equal(r[0], m0)
    np.testing.assert_array_equal(r[1], m1)
    np.testing.assert_array_equal(r[2], m2)
    np.testing.assert_array_equal(r[3], m0.T)
    np.testing.assert_array_equal(r[4], m1 @ m2)
    np.testing.assert_array_equal(r[5], m0 @ m1 + 0.5)
    area = np.full((16, 16), sentinel, np.float32)
    area[1:9, 8:16] = m0
    np.testing.assert_array_equal(out[384:].reshape(16, 16), area)
    h0, h1 = hs[0:8, 0:8].astype(np.float32), hs[8:16, 8:16].astype(np.float32)
    np.testing.assert_array_equal(hout.reshape(8, 8), (h0 @ h1 + h0).astype(np.float16))


def test_transposed_access_with_origin_is_refused(ops):
    with pytest.raises(EmuError) as e:
        ops.dispatch(
            "sgm_transposed_origin",
            (1,),
            (32,),
            {0: np.zeros(256, np.float32), 1: np.zeros(64, np.float32)},
        )
    assert e.value.code == ERR_KERNEL
    msg = str(e.value)
    assert "simdgroup_load: transposed load with a nonzero matrix_origin" in msg
    lines = (OPS / "simdgroup_matrix.metal").read_text().splitlines()
    line = next(i + 1 for i, t in enumerate(lines) if "TRANSPOSED-ORIGIN" in t)
    assert f"tests/metal_ops/simdgroup_matrix.metal:{line}" in msg
