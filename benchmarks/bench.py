"""llama-bench-style throughput and latency benchmark for metallic, optionally against llama.cpp.

    python benchmarks/bench.py [--model PATH_OR_NAME] [-p 256] [-n 128] [-r 5] [-t 2]
                               [--vs-llama-cpp] [--json PATH] [--markdown]

pp: one ``engine.forward`` over N prompt tokens (logits of the last position only).
tg: N successive greedy ``engine.decode`` calls after a short (8-token) prompt.
Both call the native engine directly, as llama-bench calls llama.cpp; the end-to-end
``Model.stream_generate`` rate is reported beside them to show the Python API's overhead.
Load time and memory come from fresh subprocesses (one per repetition and engine) so that
neither engine's memory or warm state leaks into the other's figures. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_report  # noqa: E402
from bench_util import (  # noqa: E402
    ForeignCpu,
    bytes_per_token,
    machine_info,
    peak_rss_bytes,
    rss_bytes,
    run_probe,
    stream_read_gbs,
    tensor_table,
)

SHORT_PROMPT = 8  # tokens before the timed generation (tg), as a chat turn's tail would be
KV_DTYPE = "f16"  # both engines
PROMPT_TEXT = (
    "The history of computing is a story of ideas about memory and arithmetic. Early machines "
    "stored numbers on drums and in delay lines; later ones used magnetic cores, then transistors "
    "and integrated circuits. Each step made memory larger and faster, yet the gap between how "
    "quickly a processor can compute and how quickly it can read its data kept growing. "
)


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (llama-bench's short flags where they exist)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "-m",
        "--model",
        default=None,
        help="a .gguf path or a registry name (default: registry default)",
    )
    p.add_argument("-p", "--n-prompt", type=int, default=256, help="prompt tokens for pp and TTFT")
    p.add_argument("-n", "--n-gen", type=int, default=128, help="generated tokens for tg")
    p.add_argument("-r", "--repetitions", type=int, default=5)
    p.add_argument("-t", "--threads", type=int, default=2)
    p.add_argument(
        "--vs-llama-cpp", action="store_true", help="also run llama-cpp-python, interleaved"
    )
    p.add_argument(
        "--llama-flash-attn", action="store_true", help="llama.cpp flash attention on (default off)"
    )
    p.add_argument(
        "--busy",
        type=float,
        default=0.10,
        help="redo a repetition if other processes used more than this share of the CPUs",
    )
    p.add_argument("--busy-retries", type=int, default=3, help="redos per repetition (0: never)")
    p.add_argument("--bandwidth-mib", type=int, default=512, help="buffer of the bandwidth probe")
    p.add_argument("--json", type=Path, default=None, help="write every raw number here")
    p.add_argument(
        "--no-dispatches",
        action="store_true",
        help="skip the Metal plan's dispatch count (runs a few tokens on device=metal-emulated)",
    )
    p.add_argument("--markdown", action="store_true", help="print the README table")
    p.add_argument("--probe", choices=("metallic", "llama"), help=argparse.SUPPRESS)
    return p


def check_args(args: argparse.Namespace) -> None:
    """Rejects values that cannot make a benchmark."""
    if args.busy_retries < 0 or not 0.0 <= args.busy <= 1.0:
        raise SystemExit("[bench] --busy: expected 0..1 and --busy-retries >= 0")
    for name in ("n_prompt", "n_gen", "repetitions", "threads", "bandwidth_mib"):
        if getattr(args, name) < 1:
            raise SystemExit(
                f"[bench] --{name.replace('_', '-')}: expected an int >= 1, got {getattr(args, name)}"
            )


def resolve_model(name: str | None) -> Path:
    """A file path as given, else a registry name (fetched and verified by the registry)."""
    if name is not None and Path(name).expanduser().exists():
        return Path(name).expanduser().resolve()
    from metallic import registry

    return registry.resolve(name, progress=True)


def context_size(n_prompt: int, n_gen: int) -> int:
    """KV positions for both engines: prompt + generation + 16, rounded up to a multiple of 256."""
    return -(-(n_prompt + n_gen + 16) // 256) * 256


def prompt_ids(tokenizer, n: int) -> list[int]:
    """``n`` token ids of English text from our tokenizer (fed unchanged to both engines)."""
    ids = tokenizer.encode(PROMPT_TEXT, add_special_tokens=True)
    body = tokenizer.encode(PROMPT_TEXT, add_special_tokens=False)
    while len(ids) < n:
        ids += body
    return ids[:n]


class MetallicRunner:
    """Times metallic's native engine (pp, tg) and public API (TTFT, stream_generate)."""

    def __init__(self, path: Path, *, threads: int, n_ctx: int):
        import metallic
        from metallic import _core

        t0 = time.perf_counter()
        self.model = metallic.load(
            path, device="cpu", threads=threads, context_length=n_ctx, kv_cache_dtype=KV_DTYPE
        )
        self.load_seconds = time.perf_counter() - t0
        self.engine = self.model._engine  # the native engine: what llama-bench's peer is
        self.n_vocab = int(self.engine.n_vocab)
        self.sampler = _core.Sampler(self.n_vocab)  # temperature 0: argmax in C++
        self.logits = np.zeros((1, self.n_vocab), dtype=np.float32)
        self.settings = {
            "context_length": n_ctx,
            "threads": threads,
            "kv_cache_dtype": KV_DTYPE,
            "device": "cpu",
        }

    def prompt(self, ids: list[int]) -> float:
        """Seconds of one ``engine.forward`` over ``ids`` from position 0, last logits only."""
        arr = np.asarray(ids, dtype=np.int32)
        t0 = time.perf_counter()
        self.engine.forward(arr, 0, self.logits, False)
        return time.perf_counter() - t0

    def ttft(self, ids: list[int]) -> float:
        """Seconds from ``stream_generate(ids)`` to its first response (public API, greedy)."""
        t0 = time.perf_counter()
        stream = self.model.stream_generate(ids, max_tokens=1, temperature=0.0)
        next(stream)
        dt = time.perf_counter() - t0
        stream.close()
        return dt

    def generate(self, short_ids: list[int], n_gen: int) -> tuple[float, list[int]]:
        """(seconds, tokens) of ``n_gen`` greedy ``engine.decode`` calls after an untimed prompt."""
        arr = np.asarray(short_ids, dtype=np.int32)
        self.engine.forward(arr, 0, self.logits, False)
        self.sampler.reset()
        token = self.sampler.sample(self.logits[0])
        pos, out = len(short_ids), []
        t0 = time.perf_counter()
        for _ in range(n_gen):
            token = self.engine.decode(token, pos, self.sampler)
            out.append(token)
            pos += 1
        return time.perf_counter() - t0, out

    def stream(self, short_ids: list[int], n_gen: int) -> tuple[float, int]:
        """(decode tok/s between the first and last response, responses) of ``stream_generate``
        after the same short prompt: the engine rate minus the Python API's per-token cost."""
        stamps = [
            time.perf_counter() for _ in self.model.stream_generate(short_ids, max_tokens=n_gen)
        ]
        tps = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")
        return tps, len(stamps)

    def close(self) -> None:
        """Closes the model."""
        self.model.close()


def probe_metallic(payload: dict) -> dict:
    """The memory/load probe for metallic (run in a fresh process by ``--probe metallic``)."""
    import metallic  # noqa: F401  (import cost stays out of the load time, as for llama_cpp)

    rss0 = rss_bytes()
    runner = MetallicRunner(
        Path(payload["model"]), threads=payload["threads"], n_ctx=payload["n_ctx"]
    )
    rss1 = rss_bytes()
    runner.prompt(payload["ids"])
    runner.generate(payload["short_ids"], payload["n_gen"])
    out = {
        "load_s": runner.load_seconds,
        "rss_base": rss0,
        "rss_after_load": rss1,
        "rss_after_run": rss_bytes(),
        "peak_rss": peak_rss_bytes(),
    }
    runner.close()
    return out


def plan_dispatches(path: Path, ids: list[int], n_prompt: int = 4) -> dict | None:
    """Dispatches per transformer layer of the Metal plan (the Metal device encodes the very
    launches the emulator runs), for a prefill of ``n_prompt`` tokens and one decoded token, plus
    the CPU device's ops per layer. None when the emulator library was not built (no clang-19).
    Counts, not timings: the emulator is slow and its speed means nothing for a GPU."""
    import metallic
    from metallic.errors import DeviceUnavailable

    out = {}
    for device in ("metal-emulated", "cpu"):
        try:
            model = metallic.load(path, device=device, threads=2, context_length=16)
        except DeviceUnavailable:
            return None
        with model:
            model.logits(ids[:n_prompt])
            prefill = model.stats()
            model.generate(ids[:n_prompt], max_tokens=2)  # ends on one decoded token
            decode = model.stats()
        out[device] = {
            "n_layer": decode["n_layer"],
            "prefill_tokens": prefill["last_tokens"],
            "prefill_per_layer": prefill["dispatches_per_layer"],
            "decode_tokens": decode["last_tokens"],
            "decode_per_layer": decode["dispatches_per_layer"],
            "decode_layer_bytes": decode["last_layer_bytes"],
        }
    return out


def _record(store: dict, key: str, value) -> None:
    store.setdefault(key, []).append(value)


def _bench_engine(
    runner, store: dict, ids: list[int], short: list[int], n_gen: int, api: bool
) -> None:
    """One repetition of every timed figure for one engine."""
    n = len(ids)
    dt = runner.prompt(ids)
    _record(store, "pp_s", dt)
    _record(store, "pp_tps", n / dt)
    dt, toks = runner.generate(short, n_gen)
    _record(store, "tg_s", dt)
    _record(store, "tg_tps", n_gen / dt)
    store["tg_tokens"] = toks
    _record(store, "ttft_s", runner.ttft(ids))
    if api:
        tps, count = runner.stream(short, n_gen)
        _record(store, "stream_tps", tps)
        _record(store, "stream_tokens", count)


def _timed_repetitions(engines, results: dict, args, ids, short, log) -> None:
    """Interleaved repetitions (A B A B ...). A repetition during which other processes used
    more than ``--busy`` of the CPUs is set aside (kept under "discarded") and run again, at most
    ``--busy-retries`` times; the last try is kept whatever the load."""
    foreign = ForeignCpu()
    for rep in range(args.repetitions):
        for attempt in range(args.busy_retries + 1):
            trial = {name: {} for name, _ in engines}
            for name, runner in engines:
                foreign.start()
                _bench_engine(runner, trial[name], ids, short, args.n_gen, api=name == "metallic")
                _record(trial[name], "foreign_cpu", foreign.stop())
            line = ", ".join(_rep_line(n, trial[n]) for n in trial)
            busy = max((t["foreign_cpu"][0] or 0.0) for t in trial.values()) > args.busy
            if busy and attempt < args.busy_retries:
                log(f"# rep {rep + 1}/{args.repetitions} set aside (busy machine): {line}")
                for name in trial:
                    results[name].setdefault("discarded", []).append(trial[name])
                continue
            log(f"# rep {rep + 1}/{args.repetitions}: {line}")
            for name, values in trial.items():
                runs = results[name]["runs"]
                for key, value in values.items():
                    if key == "tg_tokens":
                        runs[key] = value
                    else:
                        runs.setdefault(key, []).extend(value)
            break


def _rep_line(name: str, runs: dict) -> str:
    share = runs["foreign_cpu"][-1]
    other = f" (others used {share:.0%} of the CPUs)" if share is not None else ""
    return f"{name} pp {runs['pp_tps'][-1]:.1f} tg {runs['tg_tps'][-1]:.1f}{other}"


def _agree_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def run_bench(args: argparse.Namespace, log=print) -> dict:
    """Runs the whole benchmark described by ``args`` and returns every raw number."""
    check_args(args)
    path = resolve_model(args.model)
    n_ctx = context_size(args.n_prompt, args.n_gen)
    log(f"# model {path.name}, threads {args.threads}, n_ctx {n_ctx}, reps {args.repetitions}")
    ours = MetallicRunner(path, threads=args.threads, n_ctx=n_ctx)
    ids = prompt_ids(ours.model.tokenizer, args.n_prompt)
    short = ids[: min(SHORT_PROMPT, args.n_prompt)]
    kv_mean = len(short) + (args.n_gen + 1) / 2  # the token at position p attends p + 1 rows
    accounting = bytes_per_token(
        tensor_table(ours.model._bundle), ours.model._bundle.config, kv_mean, 2
    )

    peer = None
    if args.vs_llama_cpp:
        from bench_llama import LlamaRunner

        peer = LlamaRunner(
            path,
            threads=args.threads,
            n_ctx=n_ctx,
            n_batch=args.n_prompt,
            flash_attn=args.llama_flash_attn,
        )
    engines = [("metallic", ours)] + ([("llama_cpp", peer)] if peer else [])
    results = {name: {"settings": r.settings, "runs": {}} for name, r in engines}

    log("# warm-up")
    for _, runner in engines:
        runner.prompt(ids)
        runner.generate(short, min(args.n_gen, 16))
    _timed_repetitions(engines, results, args, ids, short, log)
    for _, runner in engines:
        runner.close()
    del ours, peer, engines

    log("# load / memory probes (fresh processes)")
    payload = {
        "model": str(path), "threads": args.threads, "n_ctx": n_ctx, "n_batch": args.n_prompt,
        "flash_attn": args.llama_flash_attn, "ids": ids, "short_ids": short, "n_gen": args.n_gen,
    }  # fmt: skip
    for _ in range(args.repetitions):
        for name in results:
            _record(
                results[name],
                "probes",
                run_probe("metallic" if name == "metallic" else "llama", payload),
            )

    log("# memory bandwidth probe")
    bandwidth = stream_read_gbs(args.threads, args.bandwidth_mib)
    for name in results:
        runs = results[name]["runs"]
        runs["decode_gbs"] = [accounting["total"] * tps / 1e9 for tps in runs["tg_tps"]]
    dispatches = None
    if not args.no_dispatches:
        log("# Metal plan dispatches (device=metal-emulated, a few tokens)")
        dispatches = plan_dispatches(path, ids)
    agree = None
    if "llama_cpp" in results:
        agree = _agree_prefix(
            results["metallic"]["runs"]["tg_tokens"], results["llama_cpp"]["runs"]["tg_tokens"]
        )
    return {
        "args": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "probe"
        },
        "model": {"path": str(path), "name": path.name, "size_bytes": path.stat().st_size},
        "n_ctx": n_ctx,
        "prompt_ids": ids,
        "short_prompt_ids": short,
        "bytes_per_token": accounting,
        "bandwidth": bandwidth,
        "machine": machine_info(),
        "engines": results,
        "greedy_agree_prefix": agree,  # tg tokens on which both engines' greedy picks agree
        "dispatches": dispatches,
    }


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    args = build_parser().parse_args(argv)
    if args.probe:  # internal: the fresh-process load/memory probe
        payload = json.loads(sys.stdin.read())
        if args.probe == "metallic":
            answer = probe_metallic(payload)
        else:
            from bench_llama import probe

            answer = probe(payload)
        print(json.dumps(answer))
        return 0
    result = run_bench(args, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    result["summary"] = bench_report.summary(result)
    result["paired_ratios"] = bench_report.paired_ratios(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    print(bench_report.markdown(result) if args.markdown else bench_report.detailed(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
