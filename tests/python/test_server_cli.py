"""``metallic-server`` as a process: arguments, load errors, and SIGTERM draining the requests in
flight (a stream started before the signal ends normally, then the process exits 0)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")
tiny_models = pytest.importorskip("tiny_models")

from metallic.server.cli import build_parser, main  # noqa: E402


def _env():
    """The child imports what this process imports (an installed metallic, or src/)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env


def test_defaults_and_bad_arguments(capsys):
    args = build_parser().parse_args(["--model", "x.gguf"])
    assert (args.host, args.port, args.parallel, args.context_length) == (
        "127.0.0.1",
        8080,
        4,
        4096,
    )
    assert args.kv_cache_dtype == "f16" and args.stream_interval_ms == 16.0
    assert build_parser().parse_args(["--stream-interval-ms", "0"]).stream_interval_ms == 0.0
    for kv in ("f32", "q8_0", "q4_0"):
        assert build_parser().parse_args(["--kv-cache-dtype", kv]).kv_cache_dtype == kv
    bad_args = (["--port", "70000"], ["--parallel", "0"], ["--max-queue", "-1"], ["--nope"])
    bad_args += (["--stream-interval-ms", "-1"], ["--stream-interval-ms", "nan"])
    bad_args += (["--stream-interval-ms", "1001"],)
    for bad in (*bad_args, ["--kv-cache-dtype", "q8"]):
        assert main(bad) == 2
        assert capsys.readouterr().err.startswith("metallic-server: error:")


def test_missing_model_is_one_line_error(tmp_path, capsys):
    assert main(["--model", str(tmp_path / "missing.gguf")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("metallic-server: FileNotFound:") and err.count("\n") == 1


def _wait_health(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()
        try:
            if urllib.request.urlopen(url + "/health", timeout=1).status == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("server did not become healthy")


def test_sigterm_drains_streams_in_flight(tmp_path):
    from test_server import free_port

    path = tiny_models.make_model(tmp_path, "llama", "q8_0", "gguf").path
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "metallic.server", "--model", str(path), "--port", str(port)]
    cmd += ["--parallel", "2", "-t", "1", "-c", "256", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_health(url, proc)
        body = {"prompt": "Once", "max_tokens": 200, "temperature": 0.8, "seed": 1, "stream": True}
        req = urllib.request.Request(
            url + "/v1/completions", data=json.dumps(body).encode(), method="POST"
        )
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=60) as resp:
            first = resp.readline()
            assert first.startswith(b"data: ")
            proc.send_signal(signal.SIGTERM)
            rest = resp.read().decode()
        events = [ln[6:] for ln in (first.decode() + rest).splitlines() if ln.startswith("data: ")]
        assert events[-1] == "[DONE]"
        last = json.loads(events[-2])
        assert last["choices"][0]["finish_reason"] in ("length", "stop")
        assert proc.wait(60) == 0
        with pytest.raises(OSError):
            urllib.request.urlopen(url + "/health", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
