"""Runtime faults: Ctrl-C inside native prefill / decode, and memory released by close().

Each scenario runs in a fresh interpreter (a SIGINT that escaped as KeyboardInterrupt would
otherwise stop the whole pytest session) and reports JSON on its last stdout line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import metallic

SRC = str(Path(metallic.__file__).resolve().parent.parent)

INTERRUPT = textwrap.dedent(
    """
    import json, os, signal, sys, threading, time
    import numpy as np
    import metallic
    from metallic import errors

    path, phase = sys.argv[1], sys.argv[2]
    model = metallic.load(path, threads=2, context_length=4096)
    probe = list(range(100, 132))
    before = model.logits(probe)
    fired = {}

    def fire(delay):
        time.sleep(delay)
        fired["t"] = time.perf_counter()
        os.kill(os.getpid(), signal.SIGINT)

    result = {"phase": phase}
    if phase == "prefill":
        ids = [int(t) for t in np.random.default_rng(0).integers(100, 40000, 4000)]
        threading.Thread(target=fire, args=(0.3,), daemon=True).start()
        try:
            model.generate(ids, max_tokens=1)
            result["outcome"] = "finished"
        except errors.Cancelled:
            result["outcome"] = "cancelled"
    else:
        threading.Thread(target=fire, args=(0.5,), daemon=True).start()
        try:
            n = 0
            for r in model.stream_generate("Once upon a time", max_tokens=3000):
                n += 1
            result["outcome"] = "finished"
        except errors.Cancelled:
            result["outcome"] = "cancelled"
    result["latency_ms"] = (time.perf_counter() - fired["t"]) * 1e3
    after = model.logits(probe)  # the same model works again, with identical numbers
    result["same_logits"] = bool(np.array_equal(before, after))
    result["paris"] = model.generate("The capital of France is", max_tokens=3)
    print(json.dumps(result))
    """
)

CLOSE = textwrap.dedent(
    """
    import gc, json, sys
    import metallic

    def rss():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024

    base = rss()
    model = metallic.load(sys.argv[1], threads=2, context_length=2048)
    model.generate(list(range(100, 400)), max_tokens=8)
    loaded = rss()
    model.close()
    del model
    gc.collect()
    print(json.dumps({"base": base, "loaded": loaded, "closed": rss()}))
    """
)


def _default_sigint() -> None:
    # A shell that starts the suite in the background (``cmd &``, no job control) leaves SIGINT
    # ignored, and Python keeps an inherited SIG_IGN: Ctrl-C is then meant to do nothing. The
    # scenarios need the default, as in a terminal.
    if sys.platform != "win32":
        signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run(script: str, *args: str, timeout: float = 120) -> dict:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        preexec_fn=_default_sigint if sys.platform != "win32" else None,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_ctrl_c_cancels_quickly_and_the_model_recovers(smollm2_path, phase):
    r = _run(INTERRUPT, str(smollm2_path), phase)
    assert r["outcome"] == "cancelled", r
    # One layer of a 256-token prefill chunk is ~10 ms on 2 cores; 250 ms leaves room for a
    # loaded CI machine while still proving the native call stopped early (the 4000-token
    # prefill takes several seconds, the 3000-token generation over ten).
    assert r["latency_ms"] < 250, r
    assert r["same_logits"], r
    assert r["paris"].startswith(" Paris"), r


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_close_returns_memory(smollm2_path):
    r = _run(CLOSE, str(smollm2_path))
    grown = r["loaded"] - r["base"]
    assert grown > 80 << 20, r  # the repacked weights and the touched pages
    # After close the engine's buffers are freed and the file unmapped; what remains is the
    # tokenizer's and Python's allocator slack (measured 41 MB of the 154 MB growth).
    assert r["closed"] - r["base"] < grown * 0.35, r
