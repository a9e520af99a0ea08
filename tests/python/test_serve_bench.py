"""Pure helpers of benchmarks/serve_bench.py, its argument checks, its client against a stub SSE
server, and the server-process wrapper on a plain sleeping child. No model, no timing asserted."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import serve_bench as sb  # noqa: E402

from metallic.errors import InvalidArgument  # noqa: E402


@pytest.mark.parametrize("n", [1, 2, 7, 100])
@pytest.mark.parametrize("q", [0, 1, 50, 90, 99, 100])
def test_percentile_matches_numpy(n, q):
    values = list(np.random.default_rng(n).normal(size=n))
    assert sb.percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-12)


def test_percentile_edges():
    assert sb.percentile([], 50) is None
    with pytest.raises(ValueError, match=r"\[serve_bench\] percentile"):
        sb.percentile([1.0], 101)


def test_parse_sse_line():
    assert sb.parse_sse_line('data: {"a": 1}\r\n') == {"a": 1}
    assert sb.parse_sse_line('data:{"a": 1}') == {"a": 1}
    assert sb.parse_sse_line("data: [DONE]") == sb.DONE
    for line in ("", ": ping - 2024", "event: message", "id: 3", "retry: 15000"):
        assert sb.parse_sse_line(line) is None
    with pytest.raises(ValueError, match=r"\[serve_bench\] SSE data: expected JSON"):
        sb.parse_sse_line("data: {oops")
    with pytest.raises(ValueError, match="expected an object"):
        sb.parse_sse_line("data: [1, 2]")


def test_choice_text_and_prompts():
    assert sb.choice_text({"text": "ab"}, "completions") == "ab"
    assert sb.choice_text({"delta": {"content": "cd"}}, "chat") == "cd"
    assert sb.choice_text({"delta": {"role": "assistant"}}, "chat") == ""
    assert sb.choice_text({"text": None, "finish_reason": "length"}, "completions") == ""
    prompts = [sb.make_prompt(k) for k in range(200)]
    assert len(set(prompts)) == 200  # every request of a default sweep has its own prompt
    firsts = [p.split()[0] for p in prompts[: len(sb.TOPICS)]]
    assert len(set(firsts)) > 1
    body = sb.request_body("hi", "chat", "m", 5)
    assert body["messages"][0]["content"].endswith("hi") and body["stream"]
    assert body["stream_options"] == {"include_usage": True} and body["temperature"] == 0.0
    assert sb.request_body("hi", "completions", "m", 5, 1.0)["temperature"] == 1.0


def _rec(tokens, gaps, ttft=0.1, error=None, prompt_tokens=10):
    return {
        "error": error, "chunk_gaps": gaps, "ttft": ttft, "completion_tokens": tokens,
        "prompt_tokens": prompt_tokens, "tokens_from": "usage", "decode_tps": 10.0,
    }  # fmt: skip


def test_summarize_and_ratios():
    recs = [_rec(8, [0.01] * 7), _rec(4, [0.03] * 3), _rec(0, [], None, error="HTTP 500")]
    s = sb.summarize(recs, wall=2.0)
    assert (s["requests"], s["errors"], s["completion_tokens"], s["prompt_tokens"]) == (
        3,
        1,
        12,
        20,
    )
    assert s["agg_tps"] == 6.0 and s["ttft_ms_p50"] == pytest.approx(100.0)
    assert s["itl_ms_p50"] == pytest.approx(10.0) and s["itl_ms_p99"] == pytest.approx(30.0)
    assert sb.summarize([_rec(1, [], prompt_tokens=None)], 1.0)["prompt_tokens"] is None

    def run(tps):
        return {"levels": [{"concurrency": c, "summary": {"agg_tps": v}} for c, v in tps.items()]}

    r = sb.ratios({"metallic": run({1: 10.0, 8: 40.0}), "llama-cpp": run({1: 5.0, 8: 5.0})})
    assert r[8]["metallic_over_llama"] == 8.0 and r[8]["metallic_scaling"] == 4.0
    assert r[8]["llama-cpp_scaling"] == 1.0
    assert "| 8 | 40.0 | 5.0 | 8.00 | 4.00 | 1.00 |" in sb.ratio_table(r)
    only = sb.ratios({"llama-cpp": run({2: 5.0})})
    assert only[2]["metallic_tps"] is None and only[2]["llama-cpp_scaling"] is None


def test_report_compares_one_stream_with_the_in_process_median():
    level = {"concurrency": 1, "summary": sb.summarize([_rec(8, [0.01] * 7)], 1.0), "requests": []}
    level["summary"]["stream_tps_p50"] = 95.0
    runs = [{"generation_tps": g, "generation_tokens": 64, "prompt_tokens": 30, "decode_tps": g}
            for g in (90.0, 110.0, 100.0)]  # fmt: skip
    med = {k: sb.percentile([r[k] for r in runs], 50) for k in runs[0]}
    result = {
        "machine": {"cpu_model": "cpu", "metallic": "0", "llama_cpp_python": None},
        "args": {"threads": 2, "parallel": 1, "max_tokens": 64, "endpoint": "completions"},
        "model": {"name": "m.gguf"}, "servers": {"metallic": {"levels": [level]}},
        "ratios": sb.ratios({"metallic": {"levels": [level]}}),
        "baseline": {**med, "runs": runs},
    }  # fmt: skip
    text = sb.report(result)
    assert "decode 100.0 tok/s (median of 3 prompts, 64 tokens)" in text
    assert "metallic-server 1 stream: decode 95.0 tok/s; server / in-process 0.95" in text


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--concurrency", "0"], "--concurrency"),
        (["--max-tokens", "0"], "--max-tokens"),
        (["--threads", "0"], "--threads"),
        (["--parallel", "-1"], "--parallel"),
        (["--requests-per-client", "0"], "--requests-per-client"),
        (["--startup-timeout", "nan"], "--startup-timeout"),
        (["--port", "70000"], "--port"),
        (["--busy", "1.5"], "--busy"),
        (["--temperature", "2.5"], "--temperature"),
        (["--temperature", "nan"], "--temperature"),
        (["--max-tokens", "64", "--context-length", "100"], "--context-length"),
    ],
)
def test_check_args_rejects(argv, flag):
    args = sb.build_parser().parse_args(["--server", "llama-cpp", *argv])
    args.servers = ["llama-cpp"]
    with pytest.raises(InvalidArgument, match=rf"\[serve_bench\] {flag}: expected") as e:
        sb.check_args(args)
    assert isinstance(e.value, ValueError)


def test_server_commands():
    args = sb.build_parser().parse_args(["-t", "3", "--llama-args", "--n_batch 64"])
    args.parallel = 4
    path = Path("/m.gguf")
    llama = sb.server_command("llama-cpp", path, 9000, args, 512)
    assert llama[1:3] == ["-m", "llama_cpp.server"] and llama[-2:] == ["--n_batch", "64"]
    assert " --interrupt_requests False " in " ".join(llama) and "--n_threads_batch" in llama
    ours = " ".join(sb.server_command("metallic", path, 9000, args, 512))
    assert "-m metallic.server --model /m.gguf" in ours
    assert "--port 9000 --parallel 4 --threads 3 --context-length 512" in ours


class _StubSSE(BaseHTTPRequestHandler):
    """Streams three completion chunks, a usage chunk and [DONE]."""

    def do_POST(self):  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        events = [{"choices": [{"text": t, "finish_reason": None}]} for t in ("a", "", "b", "c")]
        events.append({"choices": [{"text": "", "finish_reason": "length"}]})
        events.append({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 4}})
        for e in events:
            self.wfile.write(f"data: {json.dumps(e)}\n\n".encode())
            self.wfile.flush()
            time.sleep(0.002)
        self.wfile.write(b": ping\n\ndata: [DONE]\n\n")

    def log_message(self, *a):
        pass


def test_one_request_against_stub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StubSSE)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1/completions"

    async def go():
        client = sb.LeanClient(timeout=30.0)
        body = sb.request_body("x", "completions", "m", 4)
        return await sb.one_request(client, url, body, "completions", time.perf_counter())

    try:
        rec = asyncio.run(go())
    finally:
        server.shutdown()
        server.server_close()
    assert rec["error"] is None and rec["finish_reason"] == "length"
    assert (rec["completion_tokens"], rec["prompt_tokens"], rec["tokens_from"]) == (4, 5, "usage")
    assert len(rec["chunk_gaps"]) == 2 and rec["chars"] == 3 and rec["ttft"] > 0


def test_server_process_stops_and_reports_exit():
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    proc = sb.ServerProcess("sleeper", sleeper, stop_timeout=5.0)
    with proc:
        assert proc.proc.poll() is None
    assert proc.proc.returncode == -15 and not Path(proc.log_path).exists()
    dead = sb.ServerProcess("dead", [sys.executable, "-c", "print('boom'); exit(3)"], 5.0)
    with dead, pytest.raises(sb.ServeBenchError, match=r"exited with 3[\s\S]*boom"):
        dead.wait_ready("http://127.0.0.1:9/health", timeout=30.0)
