"""One stream through metallic-server against the in-process API, prompt by prompt, alternating.

    PYTHONPATH=src python benchmarks/serve_vs_api.py [--model smollm2] [--rounds 12]
        [--max-tokens 128] [--threads 2] [--metallic-args '--stream-interval-ms 0'] [--out PATH]

The question (issue #13): does one stream served over HTTP decode within 10 % of
``stream_generate`` in a Python process of its own? serve_bench.py's ``--stream-generate-baseline``
times the in-process API once, before the server starts, and the server's level a minute later;
on a shared VM whose speed drifts by 10-20 % within minutes that compares two machines. Here the
server is started once and stays up, idle (its pool sleeps, its event loop waits on its socket),
while this process runs ``stream_generate`` on prompt k; then the server streams prompt k to this
process's client (sse_client.LeanClient, as in serve_bench.py). Odd rounds run the server first,
so neither side always follows the other. Both decode rates are (tokens - 1) / (last token - first
token), timed where the tokens arrive; the report is the median of the rounds' ratios (server /
in-process) with its quartiles, and the medians of either side. Both sides load the same GGUF
with the same threads and context; greedy, with serve_bench.py's prompts.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import shlex
import signal
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench import context_size, resolve_model  # noqa: E402
from bench_util import machine_info  # noqa: E402
from serve_bench import (  # noqa: E402
    HEALTH,
    WARMUP,
    ServeBenchError,
    ServerProcess,
    free_port,
    git_commit,
    make_prompt,
    one_request,
    percentile,
    request_body,
    server_command,
    stream_in_process,
)
from sse_client import LeanClient  # noqa: E402


def summarize_rounds(rounds: list[dict]) -> dict:
    """Median and quartiles of the per-round ratios server / in-process, and each side's median
    rate; rounds where either side decoded fewer than two tokens count as none."""
    usable = [r for r in rounds if r["server_tps"] and r["api_tps"]]
    if not usable:
        raise ServeBenchError(
            "[serve_vs_api] rounds: expected one with two tokens or more each, got none"
        )
    ratios = [r["server_tps"] / r["api_tps"] for r in usable]
    return {
        "rounds": len(usable),
        "ratio_p25": percentile(ratios, 25),
        "ratio_p50": percentile(ratios, 50),
        "ratio_p75": percentile(ratios, 75),
        "server_tps_p50": percentile([r["server_tps"] for r in usable], 50),
        "api_tps_p50": percentile([r["api_tps"] for r in usable], 50),
    }


async def _server_round(client, url: str, model_id: str, prompt: str, max_tokens: int) -> dict:
    body = request_body(prompt, "completions", model_id, max_tokens)
    rec = await one_request(client, url, body, "completions", time.perf_counter())
    if rec["error"] is not None:
        raise ServeBenchError(f"[serve_vs_api] server request: {rec['error']}")
    return rec


async def alternate(base: str, model, args, log) -> list[dict]:
    """The rounds: prompt k through ``model`` in this process and through the server at
    ``base``, the server first on odd k."""
    client = LeanClient(timeout=600.0, connect_timeout=10.0)
    url = base + "/v1/completions"
    model_id = (await client.request("GET", base + "/v1/models")).json()["data"][0]["id"]
    await _server_round(client, url, model_id, WARMUP, 8)
    rounds = []
    for k in range(args.rounds):
        prompt, server_first = make_prompt(k), k % 2 == 1
        if server_first:
            rec = await _server_round(client, url, model_id, prompt, args.max_tokens)
        api_tps, last = stream_in_process(model, prompt, args.max_tokens)
        if not server_first:
            rec = await _server_round(client, url, model_id, prompt, args.max_tokens)
        rounds.append({
            "prompt": k, "server_first": server_first, "api_tps": api_tps,
            "api_tokens": last.generation_tokens, "server_tps": rec["decode_tps"],
            "server_tokens": rec["completion_tokens"],
        })  # fmt: skip
        log(f"#   prompt {k}: in-process {api_tps or 0:.1f}, server "
            f"{rec['decode_tps'] or 0:.1f} tok/s")  # fmt: skip
    return rounds


def run(args: argparse.Namespace, log) -> dict:
    """Starts the server, loads the model here, alternates the rounds; every raw number."""
    import metallic

    path = resolve_model(args.model)
    ctx = context_size(256, args.max_tokens)  # the prompts are < 100 tokens
    port = free_port("127.0.0.1")
    sargs = argparse.Namespace(
        host="127.0.0.1", threads=args.threads, parallel=1, metallic_args=args.metallic_args
    )
    cmd = server_command("metallic", path, port, sargs, ctx)
    base = f"http://127.0.0.1:{port}"
    with ServerProcess("metallic", cmd, 15.0) as server:
        server.wait_ready(base + HEALTH["metallic"], 300.0)
        with metallic.load(path, threads=args.threads, context_length=ctx) as model:
            stream_in_process(model, WARMUP, 8)
            rounds = asyncio.run(alternate(base, model, args, log))
    return {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "model": {"path": str(path), "name": path.name},
        "context_length": ctx, "machine": machine_info(), "git_commit": git_commit(),
        "command": cmd, "rounds": rounds, "summary": summarize_rounds(rounds),
    }  # fmt: skip


def report(result: dict) -> str:
    """The result as a few lines of text."""
    s, m = result["summary"], result["machine"]
    return (
        f"{result['model']['name']}, {m.get('cpu_model')}, threads {result['args']['threads']}, "
        f"max_tokens {result['args']['max_tokens']}, {s['rounds']} alternating rounds\n"
        f"in-process stream_generate: decode {s['api_tps_p50']:.1f} tok/s (median)\n"
        f"metallic-server, one stream: decode {s['server_tps_p50']:.1f} tok/s (median)\n"
        f"server / in-process, per round: median {s['ratio_p50']:.3f} "
        f"(quartiles {s['ratio_p25']:.3f} .. {s['ratio_p75']:.3f}; goal >= 0.90)"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-m", "--model", default=None, help="a .gguf path or a registry name (smollm2)")
    p.add_argument("--rounds", type=int, default=12, help="prompts, each through both (12)")
    p.add_argument("--max-tokens", type=int, default=128, help="tokens per stream (128)")
    p.add_argument("-t", "--threads", type=int, default=2, help="threads of either side (2)")
    p.add_argument("--metallic-args", type=shlex.split, default=[], help="extra server flags")
    p.add_argument(
        "--out", type=Path, default=None, help="JSON path (results/serve-vs-api-DATE.json)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("rounds", "threads"):
        if getattr(args, name) < 1:
            parser.error(
                f"[serve_vs_api] --{name}: expected an int >= 1, got {getattr(args, name)}"
            )
    if args.max_tokens < 2:
        parser.error(f"[serve_vs_api] --max-tokens: expected an int >= 2, got {args.max_tokens}")

    def on_sigterm(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")  # unwinds through the server's stop()

    signal.signal(signal.SIGTERM, on_sigterm)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    try:
        result = run(args, log)
    except ServeBenchError as e:
        log(str(e))
        return 1
    except KeyboardInterrupt as e:
        log(f"# interrupted ({str(e) or 'Ctrl-C'}); server stopped, no results written")
        return 130
    out = args.out or HERE / "results" / f"serve-vs-api-{datetime.date.today().isoformat()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(report(result))
    log(f"# raw numbers: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
