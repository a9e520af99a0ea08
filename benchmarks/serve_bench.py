"""Serving benchmark: metallic-server against llama-cpp-python's server, streams in parallel.

    python benchmarks/serve_bench.py [--model PATH_OR_NAME] [--server metallic|llama-cpp|both]
        [--concurrency 1 2 4 8 16] [--requests-per-client 2] [--max-tokens 64] [--threads 2]
        [--parallel N] [--endpoint completions|chat] [--stream-generate-baseline] [--out PATH]

Each server is started as a subprocess on the same GGUF with the same threads (one after the
other, never both at once), warmed up with one short request, then driven at each concurrency c
by c asyncio clients, each sending --requests-per-client streaming requests one after another
(greedy, temperature 0). Every request gets its own prompt (distinct from its first words, so
neither server can reuse a cached prompt prefix); both servers see the same prompt sequence.
Figures per level: generated tok/s of the whole level (completion tokens / wall time), TTFT
(request start -> first non-empty content chunk), inter-token latency (gaps between successive
content chunks; a chunk may carry more than one token) and the median per-stream decode rate
((tokens - 1) / (last chunk - first chunk)). A level during which other processes used more than
--busy of all CPUs is set aside and redone (kept under "discarded" in the JSON). Tables go to
stdout, progress to stderr, every raw number to a JSON file. The server is stopped (SIGTERM, then
SIGKILL) on every exit path, Ctrl-C and SIGTERM included. The clients are sse_client.LeanClient
(asyncio streams, a connection per request): it costs about half the CPU per streamed chunk of
httpx's async client, CPU that on a small machine the measured server would otherwise have had.

llama_cpp.server serialises requests behind one lock (one sequence at a time); it runs with
--interrupt_requests False, without which every new request ends the stream in progress. It has
no /health (readiness: /v1/models) and sends no usage when streaming: its generated tokens are
counted as non-empty content chunks, its prompt tokens come from /extras/tokenize/count.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib.util
import json
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench import context_size, resolve_model  # noqa: E402
from bench_util import ForeignCpu, machine_info  # noqa: E402
from serve_report import (  # noqa: E402, F401 - re-exported for the tests
    SERVERS,
    _fmt,
    md_table,
    percentile,
    ratio,
    ratio_table,
    ratios,
    report,
    server_table,
    summarize,
)
from sse_client import ClientError, LeanClient  # noqa: E402

MODULES = {"metallic": "metallic.server", "llama-cpp": "llama_cpp.server"}
HEALTH = {"metallic": "/health", "llama-cpp": "/v1/models"}  # llama_cpp.server has no /health
DONE = "[DONE]"
WARMUP = "Warm-up. Say hello."
TOPICS = (
    "The printing press", "Steam engines", "The river Nile", "Medieval castles", "Honey bees",
    "The telescope", "Ocean tides", "Roman roads", "Volcanoes", "Glassmaking", "Migratory birds",
    "The violin", "Coral reefs", "Early railways", "Paper money", "Lighthouses",
)  # fmt: skip
FRAMES = (
    " is a long story. This essay tells it in detail, from its beginnings to the present day, "
    "chapter by chapter.\n\nChapter 1.",
    ": a complete guide for curious readers, with history, technique and examples.\n\nPart 1.",
    " explained step by step, in plain words, for a student who knows nothing about it.\n\n1.",
    " in twelve short lessons, each one building on the last.\n\nLesson 1.",
)


class ServeBenchError(RuntimeError):
    """A server that would not start, died, or answered nothing usable."""


# ----------------------------------------------------------------------------- pure helpers


def parse_sse_line(line: str) -> dict | str | None:
    """One line of a text/event-stream: the JSON object of a ``data:`` line, ``DONE`` for
    ``data: [DONE]``, None for lines without data (blank, ``: ping`` comments, event/id/retry).
    Malformed JSON raises ValueError quoting the line."""
    line = line.rstrip("\r\n")
    if not line.startswith("data:"):
        return None
    payload = line[5:].removeprefix(" ")
    if payload.strip() == DONE:
        return DONE
    try:
        event = json.loads(payload)
    except json.JSONDecodeError as e:
        raise ValueError(f"[serve_bench] SSE data: expected JSON, got {payload[:80]!r}") from e
    if not isinstance(event, dict):
        raise ValueError(f"[serve_bench] SSE data: expected an object, got {payload[:80]!r}")
    return event


def choice_text(choice: dict, endpoint: str) -> str:
    """The new text of one streamed choice (completions: ``text``; chat: ``delta.content``)."""
    if endpoint == "chat":
        return (choice.get("delta") or {}).get("content") or ""
    return choice.get("text") or ""


def make_prompt(k: int) -> str:
    """Prompt number k: topics differ from the first token, frames vary the rest."""
    topic, frame = TOPICS[k % len(TOPICS)], FRAMES[(k // len(TOPICS)) % len(FRAMES)]
    lap = k // (len(TOPICS) * len(FRAMES))
    return topic + frame + (f" (edition {lap + 1})" if lap else "")


def request_body(
    prompt: str, endpoint: str, model_id: str, max_tokens: int, temperature: float = 0.0
) -> dict:
    """A streaming request (greedy unless `temperature` > 0; no top_k / top_p: OpenAI's
    defaults) that asks for usage in the final chunk."""
    body = {"model": model_id, "max_tokens": max_tokens, "temperature": temperature}
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
    if endpoint == "chat":
        body["messages"] = [{"role": "user", "content": f"Write a long essay. {prompt}"}]
    else:
        body["prompt"] = prompt
    return body


# ----------------------------------------------------------------------------- client


async def one_request(client, url: str, body: dict, endpoint: str, t_ref: float) -> dict:
    """Sends one streaming request and times its content chunks (seconds from ``t_ref``)."""
    rec = {"start": time.perf_counter() - t_ref, "ttft": None, "end": None, "chunk_gaps": []}
    rec.update(completion_tokens=0, tokens_from="chunks", prompt_tokens=None, chars=0)
    rec.update(finish_reason=None, decode_tps=None, error=None)
    t0, times, usage, done = time.perf_counter(), [], None, False
    try:
        async with client.stream("POST", url, json=body) as resp:
            if resp.status_code != 200:
                detail = (await resp.aread()).decode("utf-8", "replace")[:300]
                rec["error"] = f"HTTP {resp.status_code}: {detail}"
                return rec
            async for line in resp.aiter_lines():
                event = parse_sse_line(line)
                if event is None:
                    continue
                if event == DONE:
                    done = True
                    break
                now = time.perf_counter()
                if "error" in event:
                    rec["error"] = f"server error event: {json.dumps(event['error'])[:300]}"
                    return rec
                usage = event.get("usage") or usage
                for choice in event.get("choices") or ():
                    text = choice_text(choice, endpoint)
                    rec["finish_reason"] = choice.get("finish_reason") or rec["finish_reason"]
                    if text:
                        times.append(now)
                        rec["chars"] += len(text)
    except (ClientError, ValueError) as e:  # transport failures and malformed SSE
        rec["error"] = f"{type(e).__name__}: {e}"
        return rec
    rec["end"] = time.perf_counter() - t_ref
    if not done:
        rec["error"] = "stream ended without data: [DONE]"
    if times:
        rec["ttft"] = times[0] - t0
        rec["chunk_gaps"] = [b - a for a, b in zip(times, times[1:], strict=False)]
    rec["completion_tokens"] = len(times)
    if usage and isinstance(usage.get("completion_tokens"), int):
        rec.update(completion_tokens=usage["completion_tokens"], tokens_from="usage")
        rec["prompt_tokens"] = usage.get("prompt_tokens")
    if len(times) > 1 and rec["completion_tokens"] > 1:
        rec["decode_tps"] = (rec["completion_tokens"] - 1) / (times[-1] - times[0])
    return rec


async def run_level(client, url: str, args, model_id: str, c: int, first_prompt: int) -> dict:
    """c clients, each sending --requests-per-client requests back to back."""
    rpc = args.requests_per_client

    async def worker(i: int) -> list[dict]:
        out = []
        for j in range(rpc):
            k = first_prompt + i * rpc + j
            body = request_body(
                make_prompt(k), args.endpoint, model_id, args.max_tokens, args.temperature
            )
            rec = await one_request(client, url, body, args.endpoint, t0)
            out.append({"client": i, "index": j, "prompt": k, **rec})
        return out

    t0 = time.perf_counter()
    per_client = await asyncio.gather(*(worker(i) for i in range(c)))
    wall = time.perf_counter() - t0
    records = [r for rs in per_client for r in rs]
    return {"concurrency": c, "summary": summarize(records, wall), "requests": records}


async def count_prompt_tokens(client, base: str, model_id: str, levels: list[dict]) -> None:
    """Fills prompt_tokens from llama_cpp.server's /extras/tokenize/count where the stream had no
    usage (completions only: the chat template is applied inside the server)."""
    counts: dict[int, int | None] = {}
    for lv in levels:
        for r in lv["requests"]:
            if r["prompt_tokens"] is None and r["error"] is None and r["prompt"] not in counts:
                body = {"model": model_id, "input": make_prompt(r["prompt"])}
                try:
                    resp = await client.request("POST", base + "/extras/tokenize/count", json=body)
                    got = resp.json().get("count") if resp.status_code == 200 else None
                except (ClientError, ValueError, AttributeError):  # not counted: left None
                    got = None
                counts[r["prompt"]] = got
            if r["prompt_tokens"] is None and r["error"] is None:
                r["prompt_tokens"] = counts[r["prompt"]]
        lv["summary"].update(summarize(lv["requests"], lv["summary"]["wall_s"]))


class ForeignCpuBut(ForeignCpu):
    """bench_util.ForeignCpu counting the server process (``pid``) as ours, not as others'."""

    def __init__(self, pid: int):
        super().__init__()
        self.pid = pid

    def _snapshot(self) -> tuple[int, int, int] | None:
        snap = super()._snapshot()
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, ValueError, IndexError):
            return None
        return None if snap is None else (*snap[:2], snap[2] + int(fields[11]) + int(fields[12]))


async def sweep(base: str, args, log, meter: ForeignCpu) -> dict:
    """The warm-up request, then every concurrency level, against one running server."""
    url = base + ("/v1/chat/completions" if args.endpoint == "chat" else "/v1/completions")
    client = LeanClient(timeout=args.request_timeout, connect_timeout=10.0)
    try:
        resp = await client.request("GET", base + "/v1/models")
        model_id = resp.json()["data"][0]["id"]
    except ClientError as e:
        raise ServeBenchError(f"[serve_bench] /v1/models: {e}") from e
    except (ValueError, LookupError, TypeError) as e:
        raise ServeBenchError(
            f"[serve_bench] /v1/models: expected {{'data': [{{'id': ...}}]}}, "
            f"got {resp.status_code} {resp.text[:200]!r}"
        ) from e
    warm = request_body(WARMUP, args.endpoint, model_id, 8)
    warmup = await one_request(client, url, warm, args.endpoint, time.perf_counter())
    if warmup["error"] is not None:
        raise ServeBenchError(f"[serve_bench] warm-up request failed: {warmup['error']}")
    levels, k = [], 0
    for c in args.concurrency:
        discarded = []
        for attempt in range(args.busy_retries + 1):
            meter.start()
            lv = await run_level(client, url, args, model_id, c, k)
            s = lv["summary"]
            s["foreign_cpu"] = busy = meter.stop()  # other processes' share of all CPU time
            k += c * args.requests_per_client  # a redo gets fresh prompts: no cached prefix
            log(f"#   {c} streams: {_fmt(s['agg_tps'])} tok/s, TTFT p50 "
                f"{_fmt(s['ttft_ms_p50'])} ms, {s['errors']} errors, others' CPU "
                f"{_fmt(busy, '.0%')}")  # fmt: skip
            if busy is None or busy <= args.busy or attempt == args.busy_retries:
                break
            log(f"#   set aside (others' CPU > {args.busy:.0%}), again")
            discarded.append(lv)
        levels.append({**lv, "discarded": discarded})
    if args.endpoint == "completions":
        await count_prompt_tokens(client, base, model_id, levels)
    return {"model_id": model_id, "warmup": warmup, "levels": levels}


# ----------------------------------------------------------------------------- server process


def free_port(host: str) -> int:
    """A port the OS reports free on ``host`` (a short race with other programs remains)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def server_command(name: str, path: Path, port: int, args, ctx: int) -> list[str]:
    """The command line starting server ``name`` on ``path``."""
    cmd = [sys.executable, "-m", MODULES[name], "--model", str(path), "--host", args.host]
    cmd += ["--port", str(port)]
    t = str(args.threads)
    if name == "metallic":
        cmd += ["--parallel", str(args.parallel), "--threads", t, "--context-length", str(ctx)]
        return cmd + args.metallic_args
    # --interrupt_requests False: by default a new request ends the stream being generated.
    cmd += ["--n_threads", t, "--n_threads_batch", t, "--n_ctx", str(ctx)]
    return cmd + ["--interrupt_requests", "False", "--verbose", "False", *args.llama_args]


class ServerProcess:
    """A server subprocess in its own session (the terminal's Ctrl-C reaches only us), output in
    a temporary log file; ``stop`` always ends it: SIGTERM, then SIGKILL after a timeout."""

    def __init__(self, name: str, cmd: list[str], stop_timeout: float):
        import metallic  # the server imports the same metallic as this process

        self.name, self.cmd, self.stop_timeout = name, cmd, stop_timeout
        env = dict(os.environ)
        src = str(Path(metallic.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        fd, self.log_path = tempfile.mkstemp(prefix=f"serve-bench-{name}-", suffix=".log")
        try:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=fd, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,
            )  # fmt: skip
        finally:
            os.close(fd)

    def tail(self, n: int = 40) -> str:
        """The last ``n`` lines of the server's output."""
        text = Path(self.log_path).read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-n:])

    def wait_ready(self, url: str, timeout: float) -> float:
        """Polls ``url`` until it answers 200; seconds waited. Raises if the server exits."""
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise ServeBenchError(
                    f"[serve_bench] {self.name} server exited with {self.proc.returncode} "
                    f"before {url} answered. Command: {shlex.join(self.cmd)}\n{self.tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    if resp.status == 200:
                        return time.perf_counter() - t0
            except OSError:  # refused, reset, HTTPError (503 while loading), timeout: not yet
                pass
            time.sleep(0.25)
        raise ServeBenchError(
            f"[serve_bench] {self.name} server: expected 200 from {url} within {timeout:.0f} s, "
            f"got none. Command: {shlex.join(self.cmd)}\n{self.tail()}"
        )

    def stop(self) -> int:
        """Ends the server's process group and removes the log; the exit status."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        Path(self.log_path).unlink(missing_ok=True)
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def bench_server(name: str, path: Path, args, ctx: int, log) -> dict:
    """Starts server ``name``, sweeps it and stops it whatever happens."""
    port = args.port or free_port(args.host)
    cmd = server_command(name, path, port, args, ctx)
    base = f"http://{args.host}:{port}"
    log(f"# {name}: {shlex.join(cmd)}")
    with ServerProcess(name, cmd, args.stop_timeout) as server:
        ready = server.wait_ready(base + HEALTH[name], args.startup_timeout)
        log(f"# {name}: ready after {ready:.1f} s")
        try:
            result = asyncio.run(sweep(base, args, log, ForeignCpuBut(server.proc.pid)))
        except ServeBenchError as e:
            raise ServeBenchError(f"{e}\n{name} server output:\n{server.tail()}") from e
        if server.proc.poll() is not None:
            log(f"# {name} server exited during the sweep ({server.proc.returncode}):")
            log(server.tail())
    return {"command": cmd, "startup_s": ready, "exit_code": server.proc.returncode, **result}


def stream_in_process(model, prompt: str, max_tokens: int):
    """One greedy ``stream_generate``: its decode rate, (tokens - 1) / (last - first token) timed
    as each is yielded (None under two tokens), and its last response."""
    stamps, last = [], None
    for r in model.stream_generate(prompt, max_tokens=max_tokens):
        stamps.append(time.perf_counter())
        last = r
    n = len(stamps)
    return ((n - 1) / (stamps[-1] - stamps[0]) if n > 1 else None), last


def stream_generate_baseline(path: Path, args, ctx: int) -> dict:
    """The in-process API on the prompts of the 1-stream level (make_prompt(0 .. rpc - 1)), one
    stream_generate each after a warm-up; medians, as that level's stream_tps_p50 is."""
    import metallic

    runs = []
    with metallic.load(path, threads=args.threads, context_length=ctx) as model:
        for _ in model.stream_generate(WARMUP, max_tokens=8):
            pass
        for k in range(args.requests_per_client):
            decode_tps, last = stream_in_process(model, make_prompt(k), args.max_tokens)
            runs.append({
                "generation_tps": last.generation_tps, "generation_tokens": last.generation_tokens,
                "prompt_tokens": last.prompt_tokens, "decode_tps": decode_tps,
            })  # fmt: skip
    med = {key: percentile([r[key] for r in runs if r[key] is not None], 50) for key in runs[0]}
    return {**med, "runs": runs}


# ----------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )  # fmt: skip
    a = p.add_argument
    a("-m", "--model", default=None, help="a .gguf path or a registry name (smollm2, ...)")
    a("--server", choices=("metallic", "llama-cpp", "both"), default="both", help="(both)")
    a("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="streams per level")
    a("--requests-per-client", type=int, default=2, help="requests per stream and level (2)")
    a("--max-tokens", type=int, default=64, help="max_tokens of each request (64)")
    a("--temperature", type=float, default=0.0, help="of each request (0: greedy)")
    a("-t", "--threads", type=int, default=2, help="threads of either server (2)")
    a("--parallel", type=int, default=None, help="metallic slots (default: max concurrency)")
    a("--context-length", type=int, default=None, help="both servers' context (auto)")
    a("--endpoint", choices=("completions", "chat"), default="completions", help="(completions)")
    a("--host", default="127.0.0.1", help="(127.0.0.1)")
    a("--port", type=int, default=0, help="(0: a free port)")
    a("--startup-timeout", type=float, default=300.0, help="seconds until ready (300)")
    a("--stop-timeout", type=float, default=15.0, help="seconds from SIGTERM to SIGKILL (15)")
    a("--request-timeout", type=float, default=600.0, help="seconds per request (600)")
    a("--busy", type=float, default=0.10, help="redo a level if other processes used more than "
      "this share of all CPUs (0.10)")  # fmt: skip
    a("--busy-retries", type=int, default=3, help="redos per level (3; 0: never)")
    a("--stream-generate-baseline", action="store_true",
      help="also time one stream of metallic.load(...).stream_generate in this process")  # fmt: skip
    a("--metallic-args", type=shlex.split, default=[], help="extra metallic.server flags")
    a("--llama-args", type=shlex.split, default=[], help="extra llama_cpp.server flags")
    a("--out", type=Path, default=None, help="JSON path (results/serve-MODEL-DATE.json)")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Rejects values that cannot make a benchmark, and servers that are not installed."""
    from metallic.errors import InvalidArgument

    def bad(flag: str, expected: str, got) -> InvalidArgument:
        return InvalidArgument(f"[serve_bench] --{flag}: expected {expected}, got {got}")

    for name in ("requests_per_client", "max_tokens", "threads", "parallel", "context_length"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise bad(name.replace("_", "-"), "an int >= 1", getattr(args, name))
    if min(args.concurrency) < 1:
        raise bad("concurrency", "ints >= 1", args.concurrency)
    for name in ("startup_timeout", "stop_timeout", "request_timeout"):
        if not getattr(args, name) > 0:  # also rejects nan
            raise bad(name.replace("_", "-"), "seconds > 0", getattr(args, name))
    if not (math.isfinite(args.temperature) and 0.0 <= args.temperature <= 2.0):
        raise bad("temperature", "0..2 (OpenAI's range)", args.temperature)
    if not 0.0 <= args.busy <= 1.0:
        raise bad("busy", "a share 0..1", args.busy)
    if args.busy_retries < 0:
        raise bad("busy-retries", "an int >= 0", args.busy_retries)
    if not 0 <= args.port <= 65535:
        raise bad("port", "0..65535", args.port)
    if args.context_length is not None and args.context_length < args.max_tokens + 128:
        raise bad("context-length", f">= --max-tokens + 128 = {args.max_tokens + 128}",
                  args.context_length)  # fmt: skip
    for name in args.servers:
        if importlib.util.find_spec(MODULES[name].split(".")[0]) is None or (
            importlib.util.find_spec(MODULES[name]) is None
        ):
            raise bad(f"server {name}", f"module {MODULES[name]} installed", "none")


def git_commit() -> str | None:
    """The full commit hash of this checkout, None outside git."""
    cmd = ["git", "-C", str(HERE), "rev-parse", "HEAD"]
    try:
        return (
            subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip() or None
        )
    except (OSError, subprocess.SubprocessError):
        return None


def run(args: argparse.Namespace, log) -> dict:
    """The whole benchmark; every raw number."""
    args.servers = list(SERVERS) if args.server == "both" else [args.server]
    args.concurrency = sorted(set(args.concurrency))
    check_args(args)
    args.parallel = args.parallel or max(args.concurrency)
    path = resolve_model(args.model)
    ctx = args.context_length or context_size(256, args.max_tokens)  # prompts are < 100 tokens
    log(f"# model {path.name}, threads {args.threads}, context {ctx}, streams {args.concurrency}")
    result = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "model": {"path": str(path), "name": path.name, "size_bytes": path.stat().st_size},
        "context_length": ctx, "machine": machine_info(), "git_commit": git_commit(),
        "baseline": None, "servers": {},
    }  # fmt: skip
    if args.stream_generate_baseline:
        log("# stream_generate baseline (in process)")
        result["baseline"] = stream_generate_baseline(path, args, ctx)
    for name in args.servers:
        result["servers"][name] = bench_server(name, path, args, ctx, log)
    result["ratios"] = ratios(result["servers"])
    return result


def default_out(model: str | None, path: Path) -> Path:
    """benchmarks/results/serve-<model>-<date>.json, numbered if that file exists."""
    stem = model if model and not Path(model).expanduser().exists() else path.stem
    base = HERE / "results" / f"serve-{stem}-{datetime.date.today().isoformat()}"
    out, n = Path(f"{base}.json"), 2
    while out.exists():
        out, n = Path(f"{base}-{n}.json"), n + 1
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    from metallic.errors import InvalidArgument

    parser = build_parser()
    args = parser.parse_args(argv)

    def on_sigterm(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")  # unwinds through every server's stop()

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    try:
        result = run(args, log)
    except InvalidArgument as e:
        parser.error(str(e))
    except ServeBenchError as e:
        log(str(e))
        return 1
    except KeyboardInterrupt as e:
        log(f"# interrupted ({str(e) or 'Ctrl-C'}); servers stopped, no results written")
        return 130
    out = args.out or default_out(args.model, Path(result["model"]["path"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(report(result))
    log(f"# raw numbers: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
