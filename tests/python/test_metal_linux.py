"""device="metal" on Linux: the real Objective-C++ Metal device on the Linux Metal runtime.

A package built with ``-DMETALLIC_METAL_ON_LINUX=ON`` (``pip install . -C
cmake.define.METALLIC_METAL_ON_LINUX=ON``; scripts/test_metal_linux.sh builds one and runs this
file with METALLIC_REQUIRE_METAL_LINUX=1) links native/metal/metal_device.mm, unchanged, against
Apple's Metal API as metal-cpp declares it and against libmetallic_mtlshim.so
(native/metal_linux/): Metal objects on GNUstep that enforce the preconditions Apple documents and
run every dispatch through the Metal emulator. Elsewhere this file skips.

What it checks:
* tiny llama / qwen2 / gemma3 / phi3 models through device="metal" give bit-identical logits to
  device="metal-emulated" (the same kernels run by the same emulator: any difference is a device
  bug) and the same greedy tokens as metal-emulated and cpu, at 4 KiB (Intel Mac) and 16 KiB
  (Apple Silicon) pages; SmolLM2 generates the CPU's greedy text;
* every Metal object the device makes is released (live count 0 after close) and no precondition
  is violated on the way;
* simulated system failures (no GPU, a shader compiler error, a pipeline error, out of memory, a
  GPU fault, a small maxTotalThreadsPerThreadgroup or maxBufferLength) end as typed errors;
* each precondition, violated on purpose by tests/metal_linux/shim_cases.mm, is reported (nil, or
  a command buffer in error with an NSError naming it), never a crash; LeakSanitizer sees no leak
  in a balanced run and does see a deliberate one.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("metallic._core")

import metallic  # noqa: E402
import tiny_models as tm  # noqa: E402
from metallic import _core, errors  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PKG = Path(metallic.__file__).resolve().parent
SHIM = PKG / "libmetallic_mtlshim.so"
REQUIRED = os.environ.get("METALLIC_REQUIRE_METAL_LINUX") == "1"

if _core.metal_build != "linux-runtime" or not SHIM.exists():
    why = (
        f"this metallic build has no Linux Metal runtime (metal_build={_core.metal_build!r}, "
        f"{SHIM.name} {'present' if SHIM.exists() else 'absent'}); scripts/test_metal_linux.sh "
        "builds one and runs this file"
    )
    if REQUIRED:
        pytest.fail(why, pytrace=False)
    pytest.skip(why, allow_module_level=True)

MODELS = [  # family, dtype, fmt, tied (as test_metal_emu_device.py)
    ("llama", "q4_1", "gguf", True),
    ("llama", "f16", "hf", False),
    ("qwen2", "q8_0", "gguf", False),  # q/k/v biases
    ("gemma3", "f32", "gguf", True),  # q/k norms, post-norms, GELU, windows, two RoPE bases
    ("phi3", "f32", "hf", True),  # fused qkv / gate_up, partial and scaled RoPE
]


class Shim:
    """The runtime's counters (mtlshim.h), read through ctypes from the library _core loaded."""

    def __init__(self) -> None:
        lib = ctypes.CDLL(str(SHIM))
        for name in ("live_objects", "violation_count", "dispatch_count", "commit_count"):
            getattr(lib, f"mtlshim_{name}").restype = ctypes.c_int64
        lib.mtlshim_violation.restype = ctypes.c_char_p
        lib.mtlshim_violation.argtypes = [ctypes.c_int64]
        self.lib = lib

    def live(self) -> int:
        return self.lib.mtlshim_live_objects()

    def violations(self) -> int:
        return self.lib.mtlshim_violation_count()

    def violation_texts(self, since: int) -> list[str]:
        texts = (self.lib.mtlshim_violation(i) for i in range(since, self.violations()))
        return [t.decode() for t in texts if t is not None]

    def dispatches(self) -> int:
        return self.lib.mtlshim_dispatch_count()


@pytest.fixture(scope="module")
def shim() -> Shim:
    return Shim()


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_models_metal")


@pytest.fixture
def clean(shim):
    """Every test leaves no Metal object alive and breaks no precondition."""
    assert shim.live() == 0
    before = shim.violations()
    yield
    assert shim.live() == 0, "Metal objects left alive (an alloc/new* without its release)"
    assert shim.violations() == before, shim.violation_texts(before)


def _load(m: tm.TinyModel, device: str, kv: str = "f32"):
    return metallic.load(m.path, device=device, threads=2, context_length=64, kv_cache_dtype=kv)


def _tokens(m: tm.TinyModel, n: int, seed: int) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(0, m.cfg["vocab_size"], n)]


@pytest.mark.parametrize("page", [16384, 4096])
@pytest.mark.parametrize("family,dtype,fmt,tied", MODELS)
def test_tiny_models_equal_metal_emulated_and_cpu(
    models_dir, shim, clean, monkeypatch, family, dtype, fmt, tied, page
) -> None:
    monkeypatch.setenv("METALLIC_MTLSHIM_PAGE_SIZE", str(page))
    m = tm.make_model(models_dir, family, dtype, fmt, tied)
    dispatched = shim.dispatches()
    with _load(m, "metal") as gpu, _load(m, "metal-emulated") as emu, _load(m, "cpu") as cpu:
        assert gpu.device == "metal"
        for n in (1, 7, 20):  # decode kernels, then the prefill gemm + flash attention path
            tokens = _tokens(m, n, seed=n)
            got, want = gpu.logits(tokens), emu.logits(tokens)
            assert got.shape == want.shape and np.array_equal(got, want), f"n={n}"
        prompt = _tokens(m, 9, 21)
        tokens = [r.token for r in gpu.stream_generate(prompt, max_tokens=8)]
        assert tokens == [r.token for r in emu.stream_generate(prompt, max_tokens=8)]
        assert tokens == [r.token for r in cpu.stream_generate(prompt, max_tokens=8)]
    assert shim.dispatches() > dispatched  # the shaders ran through the runtime


def test_smollm2_greedy_on_metal(smollm2_path, shim, clean) -> None:
    """The real model through the real device (~2 min in emulation): the CPU's greedy text."""
    prompt = "The capital of France is"
    with metallic.load(smollm2_path, device="cpu", context_length=64) as cpu:
        want = cpu.generate(prompt, max_tokens=4)
    with metallic.load(smollm2_path, device="metal", context_length=64) as gpu:
        got = gpu.generate(prompt, max_tokens=4)
    assert got == want and got.startswith(" Paris")


FAULTS = [  # (environment, error class, message pattern)
    ({"METALLIC_MTLSHIM_FAULT": "no-device"}, errors.DeviceUnavailable, r"\[metal\] .*no device"),
    ({"METALLIC_MTLSHIM_FAULT": "library"}, errors.KernelFailure, r"compiling shaders.*compiler"),
    ({"METALLIC_MTLSHIM_FAULT": "pipeline"}, errors.KernelFailure, r"pipeline \w+: simulated"),
    ({"METALLIC_MTLSHIM_FAULT": "alloc"}, errors.OutOfMemory, r"\[metal\] "),
    ({"METALLIC_MTLSHIM_FAULT": "commit"}, errors.KernelFailure, r"command buffer failed: .*Fault"),
    ({"METALLIC_MTLSHIM_MAX_THREADS": "16"}, errors.KernelFailure, r"at most 16 threads"),
    # 32 KiB: every wrapped weight of the tiny model fits, its 48 KiB KV cache does not, so the
    # engine fails half-built (and must release the buffers it already made).
    (
        {"METALLIC_MTLSHIM_MAX_BUFFER": "32768"},
        errors.OutOfMemory,
        r"alloc: .*largest buffer \(32768\)",
    ),
]


@pytest.mark.parametrize("env,cls,pattern", FAULTS, ids=[str(f[0]) for f in FAULTS])
def test_system_failures_are_typed_errors(
    models_dir, shim, clean, monkeypatch, env, cls, pattern
) -> None:
    """What a Mac can report (no GPU, a compiler or pipeline error, out of memory, a GPU fault, a
    device with smaller limits) ends in a typed error naming it, the device releases everything,
    and the process goes on (a crash would end this test run)."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    m = tm.make_model(models_dir, "llama", "q4_1", "gguf", True)
    # load or the first forward fails, depending on the failure
    with pytest.raises(cls, match=pattern), _load(m, "metal") as gpu:
        gpu.logits(_tokens(m, 3, 1))


# ---- the runtime's own preconditions (tests/metal_linux/shim_cases.mm) ------------------------

CASES = [
    "balanced",
    "nocopy_misaligned_pointer",
    "nocopy_partial_page",
    "nocopy_deallocator_runs",
    "buffer_too_long",
    "offset_outside_buffer",
    "set_bytes_too_long",
    "too_many_threads",
    "dispatch_without_pipeline",
    "commit_with_open_encoder",
    "encode_after_end",
    "encode_after_commit",
    "two_open_encoders",
    "encoder_released_open",
    "wait_before_commit",
    "commit_twice",
    "kernel_failure_reported",
    "results_only_after_wait",
]


# Cases that break no rule: they check behaviour (results, deallocator, error reporting).
LEGAL_CASES = {
    "balanced",
    "nocopy_deallocator_runs",
    "kernel_failure_reported",
    "results_only_after_wait",
}


def _metal_api_include(tmp: Path) -> Path:
    """Apple's Metal API as generated from metal-cpp (as the build does)."""
    if os.environ.get("METALLIC_METAL_API_INCLUDE"):
        return Path(os.environ["METALLIC_METAL_API_INCLUDE"])
    r = subprocess.run(
        ["bash", "scripts/fetch_metal_cpp.sh"], cwd=ROOT, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    metal_cpp = r.stdout.strip().splitlines()[-1]
    out = tmp / "metal_api"
    subprocess.run(
        [sys.executable, "native/metal_linux/metal_api_header.py", "--metal-cpp", metal_cpp]
        + ["--out", str(out)],
        cwd=ROOT,
        check=True,
    )
    return out


@pytest.fixture(scope="module")
def shim_cases(tmp_path_factory) -> Path:
    """tests/metal_linux/shim_cases.mm built against the runtime this package carries."""
    tmp = tmp_path_factory.mktemp("shim_cases")
    objc = shlex.split(subprocess.check_output(["gnustep-config", "--objc-flags"], text=True))
    libs = shlex.split(subprocess.check_output(["gnustep-config", "--base-libs"], text=True))
    gcc_inc = subprocess.check_output(["gcc", "-print-file-name=include"], text=True).strip()
    exe = tmp / "shim_cases"
    cmd = [
        shutil.which("clang++-19") or "clang++-19",
        *("-x", "objective-c++", "-std=c++20", "-O1", "-fblocks", "-fno-objc-arc"),
        "-fobjc-runtime=gcc",
        *(f for f in objc if f not in ("-MMD", "-MP")),
        *("-isystem", gcc_inc, f"-I{ROOT / 'native'}", f"-I{ROOT / 'native/metal_linux/include'}"),
        f"-I{_metal_api_include(tmp)}",
        *("-Wall", "-Wextra", "-Werror", "-Wno-protocol"),
        str(ROOT / "tests/metal_linux/shim_cases.mm"),
        *("-o", str(exe), f"-L{SHIM.parent}", "-lmetallic_mtlshim", f"-Wl,-rpath,{SHIM.parent}"),
        *libs,
        "-lBlocksRuntime",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-4000:]
    return exe


def _run_case(exe: Path, case: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(exe), case], capture_output=True, text=True, timeout=120, env=dict(os.environ, **env)
    )


@pytest.mark.parametrize("case", CASES)
def test_precondition_violated_on_purpose_is_reported(shim_cases, case) -> None:
    r = _run_case(shim_cases, case)
    assert r.returncode == 0, r.stdout + r.stderr  # not 1 (not reported), not a signal (crash)
    assert "live_objects=0 " in r.stdout
    want = 0 if case in LEGAL_CASES else 1
    assert f"violations={want}" in r.stdout, r.stdout + r.stderr


def _lsan(exe: Path, case: str) -> subprocess.CompletedProcess:
    runtime = subprocess.check_output(["gcc", "-print-file-name=liblsan.so"], text=True).strip()
    if not Path(runtime).exists():
        pytest.fail(f"gcc's liblsan.so not found at {runtime} (part of Debian's gcc)")
    supp = ROOT / "tests/metal_linux/lsan.supp"
    return _run_case(
        exe,
        case,
        LD_PRELOAD=runtime,
        LSAN_OPTIONS=f"fast_unwind_on_malloc=0:suppressions={supp}:print_suppressions=0",
    )


def test_leak_sanitizer_sees_no_leak_in_balanced_use(shim_cases) -> None:
    for case in ("balanced", "offset_outside_buffer", "encoder_released_open", "two_open_encoders"):
        r = _lsan(shim_cases, case)
        assert r.returncode == 0 and "LeakSanitizer" not in r.stderr, r.stderr[-4000:]


def test_leak_sanitizer_sees_a_deliberate_leak(shim_cases) -> None:
    r = _lsan(shim_cases, "leak")
    assert r.returncode != 0 and "live_objects=1 " in r.stdout
    assert "Direct leak" in r.stderr and "newBufferWithLength" in r.stderr, r.stderr[-4000:]


_LSAN_MODEL_RUN = """
import os, sys, pathlib
os.environ.pop("LD_PRELOAD")  # programs started from here are not ours to check
sys.path.insert(0, {tests!r})
import tiny_models as tm, metallic
m = tm.make_model(pathlib.Path({tmp!r}), "llama", "q4_1", "gguf", True)
with metallic.load(m.path, device="metal", threads=2, context_length=64) as gpu:
    gpu.generate(list(range(1, 12)), max_tokens=6)
    gpu.logits([1, 2, 3])
print("RAN")
"""


def test_device_run_under_leak_sanitizer(tmp_path) -> None:
    """A whole load / prefill / decode / close of device="metal" with LeakSanitizer preloaded:
    no memory lost by the device or the runtime (suppressions: tests/metal_linux/
    lsan_python.supp; Objective-C objects are counted by the `clean` checks above)."""
    runtime = subprocess.check_output(["gcc", "-print-file-name=liblsan.so"], text=True).strip()
    libstdcxx = subprocess.check_output(["gcc", "-print-file-name=libstdc++.so.6"], text=True)
    supp = ROOT / "tests/metal_linux/lsan_python.supp"
    code = _LSAN_MODEL_RUN.format(tests=str(ROOT / "tests"), tmp=str(tmp_path))
    env = dict(
        os.environ,
        LD_PRELOAD=f"{runtime} {libstdcxx.strip()}",
        LSAN_OPTIONS=f"suppressions={supp}:print_suppressions=0:malloc_context_size=4",
    )
    r = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0 and "RAN" in r.stdout, r.stderr[-4000:]
    assert "LeakSanitizer" not in r.stderr, r.stderr[-4000:]
