"""The Metal emulator's detectors, proven on deliberately broken kernels (tests/metal_broken/).

In-process (every run): a lane returning before a barrier the others wait at, different simd_*
calls in divergent lanes of a simdgroup, a simd_* call racing a barrier, an unbound buffer or a
too-small argument buffer, and a missing barrier (poisoned threadgroup memory + lane-order check).
Under the sanitizers (slow: builds emu_replay twice): ThreadSanitizer with fiber annotations
reports the missing barrier as a data race at its .metal line, ASan reports an out-of-bounds
device read at its .metal line, and every dispatch of the kernel tests replays with zero reports.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from emu_harness import (
    ERR_KERNEL,
    ERR_UNBOUND,
    NEEDS_CLANG,
    ROOT,
    EmuError,
    EmuLib,
    RmsNormArgs,
    build,
    pack,
)

BROKEN = ROOT / "tests" / "metal_broken"
SHADERS = ROOT / "shaders"

pytestmark = NEEDS_CLANG


def line_of(file: str, marker: str) -> int:
    """1-based line of the marker comment in a broken kernel (the tests never hard-code lines)."""
    lines = (BROKEN / file).read_text().splitlines()
    return next(i + 1 for i, text in enumerate(lines) if marker in text)


@pytest.fixture(scope="session")
def broken(tmp_path_factory) -> EmuLib:
    out = tmp_path_factory.mktemp("emu_broken") / "libbroken.so"
    return EmuLib(build(out, [BROKEN], headers=[SHADERS]))


def run(lib, kernel, n=64, threads=64, bufs=None):
    x = np.arange(n, dtype=np.float32)
    out = np.zeros(n, np.float32)
    lib.dispatch(kernel, (1,), (threads,), bufs or {0: x, 1: out})
    return out


def test_early_return_before_barrier(broken):
    with pytest.raises(EmuError) as e:
        run(broken, "early_return")
    assert e.value.code == ERR_KERNEL
    msg = str(e.value)
    assert msg.startswith("[metal-emu] kernel early_return:")
    assert "lane(s) 5 returned while 63 lanes wait at threadgroup_barrier" in msg
    assert f"metal_broken/early_return.metal:{line_of('early_return.metal', 'BARRIER')}" in msg


def test_divergent_simd_calls(broken):
    with pytest.raises(EmuError) as e:
        run(broken, "divergent_simd", n=32, threads=32)
    assert e.value.code == ERR_KERNEL
    msg = str(e.value)
    assert "divergent simd_* calls" in msg
    assert (
        f"simd_sum (tests/metal_broken/divergent_simd.metal:{line_of('divergent_simd.metal', 'SIMD-A')})"
        in msg
    )
    assert (
        f"simd_max (tests/metal_broken/divergent_simd.metal:{line_of('divergent_simd.metal', 'SIMD-B')})"
        in msg
    )


def test_simd_call_against_barrier(broken):
    with pytest.raises(EmuError) as e:
        run(broken, "simd_vs_barrier", n=32, threads=32)
    msg = str(e.value)
    assert e.value.code == ERR_KERNEL and "divergent control flow" in msg
    assert f"simd_vs_barrier.metal:{line_of('simd_vs_barrier.metal', '// SIMD')}" in msg
    assert f"simd_vs_barrier.metal:{line_of('simd_vs_barrier.metal', 'BARRIER')}" in msg


def test_missing_barrier_reads_poison_and_depends_on_lane_order(broken):
    """Lanes ascending: lane 0 sums before the others wrote -> poisoned (NaN) threadgroup memory.
    Lanes descending: lane 0 runs last and sees every write. A correct kernel gives the same bits
    both ways (the kernel tests check that for every shader)."""
    x = np.arange(64, dtype=np.float32)
    a, b = np.zeros(64, np.float32), np.zeros(64, np.float32)
    broken.dispatch("missing_barrier", (1,), (64,), {0: x, 1: a})
    broken.dispatch("missing_barrier", (1,), (64,), {0: x, 1: b}, reverse=True)
    assert np.isnan(a[0])
    assert b[0] == 2 * x.sum()


@pytest.fixture(scope="session")
def shaders_lib() -> EmuLib:
    from emu_harness import installed_library

    lib = installed_library()
    if lib is None:
        pytest.skip("the emulator library was not built")
    return EmuLib(lib)


def test_unbound_buffer(shaders_lib):
    x = np.ones((1, 32), np.float32)
    args = pack(RmsNormArgs, n=32, x_stride=32, out_stride=32, eps=1e-5)
    with pytest.raises(EmuError) as e:
        shaders_lib.dispatch("rms_norm_f32", (1,), (32,), {0: x, 2: x, 3: args})  # w missing
    assert e.value.code == ERR_UNBOUND
    assert str(e.value).startswith("[metal-emu] kernel rms_norm_f32: buffer(1) 'w' is not bound")


def test_argument_buffer_too_small(shaders_lib):
    x = np.ones((1, 32), np.float32)
    with pytest.raises(EmuError) as e:
        shaders_lib.dispatch(
            "rms_norm_f32", (1,), (32,), {0: x, 1: x[0], 2: x, 3: np.zeros(2, np.uint32)}
        )
    assert e.value.code == ERR_UNBOUND
    assert f"buffer(3) 'a': expected at least {RmsNormArgs.itemsize} bytes, got 8" in str(e.value)


# ----------------------------------------------------------------------------- sanitizers


@pytest.fixture(scope="session")
def sanitized(tmp_path_factory):
    """emu_replay built with TSan and with ASan+UBSan, shaders and broken kernels linked in."""
    d = tmp_path_factory.mktemp("emu_san")
    return {
        s: build(d / f"emu_replay_{s}", [SHADERS, BROKEN], sanitize=s, replay=True)
        for s in ("thread", "address")
    }


def replay(exe, cases) -> subprocess.CompletedProcess:
    return subprocess.run([str(exe), *map(str, cases)], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_tsan_reports_missing_barrier(broken, sanitized, tmp_path):
    rec = EmuLib(broken.path, record_dir=tmp_path)
    x, out = np.arange(64, dtype=np.float32), np.zeros(64, np.float32)
    rec.dispatch("missing_barrier", (1,), (64,), {0: x, 1: out})
    r = replay(sanitized["thread"], sorted(tmp_path.glob("*.case")))
    assert r.returncode != 0
    assert "WARNING: ThreadSanitizer: data race" in r.stderr
    write = line_of("missing_barrier.metal", "RACE-WRITE")
    read = line_of("missing_barrier.metal", "RACE-READ")
    assert re.search(rf"metal_broken/missing_barrier\.metal:({write}|{read}):", r.stderr), r.stderr[
        :3000
    ]


@pytest.mark.slow
def test_asan_reports_out_of_bounds_read(broken, sanitized, tmp_path):
    rec = EmuLib(broken.path, record_dir=tmp_path)
    n = np.array([16], np.uint32)
    rec.dispatch(
        "oob_read", (1,), (32,), {0: np.ones(16, np.float32), 1: np.zeros(16, np.float32), 2: n}
    )
    r = replay(sanitized["address"], sorted(tmp_path.glob("*.case")))
    assert r.returncode != 0
    assert "AddressSanitizer: heap-buffer-overflow" in r.stderr
    line = line_of("oob_read.metal", "OOB-READ")
    assert re.search(rf"READ of size 4.*?metal_broken/oob_read\.metal:{line}:", r.stderr, re.S), (
        r.stderr[:3000]
    )


@pytest.mark.slow
def test_kernel_tests_have_zero_sanitizer_reports(sanitized, tmp_path):
    """Records every dispatch of the kernel tests (test_metal_emu_kernels*.py, one file per kernel
    family), then replays them all under TSan (fiber-annotated) and ASan+UBSan: no report, no
    failure."""
    env = dict(os.environ, METALLIC_EMU_RECORD=str(tmp_path))
    kernels = sorted((ROOT / "tests" / "python").glob("test_metal_emu_kernels*.py"))
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *map(str, kernels)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout[-3000:]
    cases = sorted(tmp_path.glob("*.case"))
    assert len(cases) > 100
    for kind, exe in sanitized.items():
        r = replay(exe, cases)
        assert r.returncode == 0, f"{kind}: {r.stderr[-4000:]}"
        assert "ThreadSanitizer" not in r.stderr and "AddressSanitizer" not in r.stderr
        assert "runtime error" not in r.stderr  # UBSan
        assert f"{len(cases)} case(s), 0 failed" in r.stdout


# ----------------------------------------------------------------------------- simdgroup_matrix


def test_divergent_simdgroup_matrix_calls(broken):
    with pytest.raises(EmuError) as e:
        run(broken, "divergent_matrix", n=128, threads=32)
    assert e.value.code == ERR_KERNEL
    msg = str(e.value)
    assert "divergent simd_* calls" in msg
    f = "tests/metal_broken/divergent_matrix.metal"
    for marker in ("MMA-A", "MMA-B"):
        line = line_of("divergent_matrix.metal", marker)
        assert f"simdgroup_multiply_accumulate ({f}:{line})" in msg, msg


def test_simdgroup_matrix_call_missing_lanes(broken):
    with pytest.raises(EmuError) as e:
        run(broken, "matrix_missing_lanes", n=64, threads=32)
    assert e.value.code == ERR_KERNEL
    msg = str(e.value)
    assert "simdgroup_load: every lane of the simdgroup must take part" in msg
    assert f"divergent_matrix.metal:{line_of('divergent_matrix.metal', 'PARTIAL')}" in msg


def test_simdgroup_matrix_nonuniform_pointer(broken):
    with pytest.raises(EmuError) as e:
        run(broken, "matrix_nonuniform_pointer", n=72, threads=32)
    assert e.value.code == ERR_KERNEL
    msg = str(e.value)
    assert "simdgroup_load: pointer, elements_per_row or transpose differ between lanes" in msg
    assert f"divergent_matrix.metal:{line_of('divergent_matrix.metal', 'NONUNIFORM')}" in msg
