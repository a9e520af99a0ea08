"""No heap allocation in the token loop (AGENTS.md rule 1), counted by an independent probe.

A small LD_PRELOAD library (compiled here with the system C compiler) counts every call of libc's
``malloc``; operator new, std::string and std::function all end there. A subprocess loads a tiny
model on the CPU device, warms up, and counts the calls made during whole decode steps
(``engine.decode``: forward, head and a sampler draw with temperature, top-k, top-p and
penalties) and ragged batch steps (``engine.forward_batch`` over 4 slots). Python itself adds none
in these loops (its small objects come from pymalloc's arenas), so the native code must add none
either: before this test, the CPU device allocated 212 times per decode step (a std::function per
kernel call, check messages built eagerly) and ~5 000 times per 8-slot batch step.

Two families: llama (Q4_1, the repacked 8-row kernels) and gemma3 (sliding-window rings, q/k
norms, post-norms, GELU).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("metallic._core")

import tiny_models as tm  # noqa: E402

SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
static void* (*real_malloc)(size_t);
static long calls;
long metallic_test_malloc_calls(void) { return __atomic_load_n(&calls, __ATOMIC_RELAXED); }
void* malloc(size_t n) {
  if (!real_malloc) real_malloc = (void* (*)(size_t))dlsym(RTLD_NEXT, "malloc");
  __atomic_add_fetch(&calls, 1, __ATOMIC_RELAXED);
  return real_malloc(n);
}
"""

PROBE = textwrap.dedent(
    """
    import ctypes, json, sys
    import numpy as np
    import metallic
    from metallic import _core

    calls = ctypes.CDLL(None).metallic_test_malloc_calls
    calls.restype = ctypes.c_long
    steps = 16
    m = metallic.load(sys.argv[1], device="cpu", threads=2, context_length=96, parallel=4)
    eng = m._engine
    n_vocab = int(eng.n_vocab)
    logits = np.zeros((1, n_vocab), np.float32)
    eng.forward(np.arange(3, 11, dtype=np.int32), 0, logits, False)
    s = _core.Sampler(n_vocab, 0.8, 20, 0.9, 0.05, 1.1, 16, 7)
    tok, pos = s.sample(logits[0]), 8
    for _ in range(4):  # warm-up: first-call scratch, lazily looked-up kernels
        tok = eng.decode(tok, pos, s)
        pos += 1
    c0 = calls()
    for _ in range(steps):
        tok = eng.decode(tok, pos, s)
        pos += 1
    decode = calls() - c0

    seg = np.array([[k, 1, 0, 1] for k in range(4)], np.int64)
    toks = np.array([5, 6, 7, 8], np.int32)
    out = np.zeros((4, n_vocab), np.float32)
    prompt = np.array([[k, 6, 0, 1] for k in range(4)], np.int64)
    eng.forward_batch(np.arange(3, 27, dtype=np.int32), prompt, out)
    for p in range(6, 10):
        seg[:, 2] = p
        eng.forward_batch(toks, seg, out)
    c0 = calls()
    for p in range(10, 10 + steps):
        seg[:, 2] = p
        eng.forward_batch(toks, seg, out)
    batch = calls() - c0
    m.close()
    print(json.dumps({"decode": decode, "batch": batch, "steps": steps}))
    """
)


@pytest.fixture(scope="module")
def shim(tmp_path_factory) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or not sys.platform.startswith("linux"):
        pytest.skip("needs Linux and a C compiler for the LD_PRELOAD malloc counter")
    if os.environ.get("LD_PRELOAD"):
        pytest.skip("LD_PRELOAD is already set (a sanitizer run): the counter would stack on it")
    d = tmp_path_factory.mktemp("malloc_shim")
    (d / "shim.c").write_text(SHIM)
    lib = d / "libcount.so"
    subprocess.run(
        [cc, "-O2", "-shared", "-fPIC", "-o", str(lib), str(d / "shim.c"), "-ldl"], check=True
    )
    return lib


@pytest.mark.parametrize(("family", "dtype"), [("llama", "q4_1"), ("gemma3", "f16")])
def test_token_loop_does_not_allocate(shim, tmp_path, family, dtype) -> None:
    model = tm.make_model(tmp_path, family=family, dtype=dtype)
    env = {**os.environ, "LD_PRELOAD": str(shim)}
    env["PYTHONPATH"] = os.pathsep.join([*sys.path, env.get("PYTHONPATH", "")])
    res = subprocess.run(
        [sys.executable, "-c", PROBE, str(model.path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    counts = json.loads(res.stdout.strip().splitlines()[-1])
    # Zero expected; a native allocation per step would show up `steps` (16) times or more.
    assert counts["decode"] < counts["steps"] // 4, counts
    assert counts["batch"] < counts["steps"] // 4, counts
