"""The batching ratio at the engine: seconds per `Engine.forward_batch` step of N decode tokens
(one per slot) against N = 1, with no scheduler, sampling or server around it.

Each slot first gets a prompt of --prompt tokens; then every repetition runs --steps decode steps
at positions prompt .. prompt + steps - 1 (the same positions each repetition, so attention
spans stay alike) and the minimum and median over --repeats repetitions are reported. The ratio
N x step(1) / step(N) is the most aggregate tok/s that N streams can have over one on this
machine; the server's figure (serve_bench.py) adds prompts, sampling and HTTP to it.

    PYTHONPATH=src python benchmarks/batch_step.py -m smollm2 -t 2 --streams 1 8 16
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
from bench import resolve_model
from bench_util import machine_info

import metallic
from metallic.errors import InvalidArgument


def step_seconds(path, n: int, threads: int, prompt: int, steps: int, repeats: int) -> list[float]:
    """Seconds per step of n decode tokens, one per repetition."""
    ctx = prompt + steps + 8
    with metallic.load(path, device="cpu", threads=threads, context_length=ctx, parallel=n) as m:
        eng = m._engine
        out = np.zeros((n, int(eng.n_vocab)), np.float32)
        ids = np.arange(prompt, dtype=np.int32) % min(1000, int(eng.n_vocab) - 3) + 3
        for k in range(n):  # each slot's prompt alone: within any batch_size
            for p0 in range(0, prompt, eng.batch_size):
                chunk = ids[p0 : p0 + eng.batch_size]
                eng.forward_batch(chunk, np.array([[k, len(chunk), p0, 1]], np.int64), out)
        seg = np.array([[k, 1, 0, 1] for k in range(n)], np.int64)
        toks = np.full(n, 5, np.int32)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for p in range(prompt, prompt + steps):
                seg[:, 2] = p
                eng.forward_batch(toks, seg, out)
            times.append((time.perf_counter() - t0) / steps)
        return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", default="smollm2", help="a .gguf path or a registry name")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--prompt", type=int, default=32, help="tokens in each slot first (32)")
    ap.add_argument("--steps", type=int, default=128, help="decode steps per repetition (128)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    for name in ("threads", "prompt", "steps", "repeats"):
        if getattr(args, name) < 1:
            raise InvalidArgument(
                f"[batch_step] --{name}: expected >= 1, got {getattr(args, name)}"
            )
    if min(args.streams) < 1:
        raise InvalidArgument(f"[batch_step] --streams: expected ints >= 1, got {args.streams}")
    path = resolve_model(args.model)
    results, base = [], None
    print("| streams | step ms (min) | step ms (median) | tok/s | x one stream |")
    print("|---:|---:|---:|---:|---:|")
    for n in args.streams:
        t = sorted(step_seconds(path, n, args.threads, args.prompt, args.steps, args.repeats))
        rate = n / t[0]
        base = base or (rate if n == 1 else None)
        ratio = f"{rate / base:.2f}x" if base else "-"
        print(f"| {n} | {t[0] * 1e3:.2f} | {t[len(t) // 2] * 1e3:.2f} | {rate:.1f} | {ratio} |")
        results.append({"streams": n, "step_s": t, "tok_s": rate})
    if args.json:
        with open(args.json, "w") as f:
            info = {"machine": machine_info(), "model": str(path), "args": vars(args)}
            json.dump({**info, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
