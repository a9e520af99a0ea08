"""Aggregate decode throughput of N concurrent sequences vs one, on a synthetic model.

For machines without the registry's files (a lent device machine): writes a SmolLM2-shaped llama
GGUF (30 layers, hidden 576, FFN 1536, 9 / 3 heads, Q4_1 layers) of random blocks with
synthetic_prefill.py's writer, then runs ``model.batch_generate`` on N prompts of 32 tokens with
``parallel=N`` (continuous batching: one multi-token forward pass per step) and reports generated
tokens per second of wall time for each N and its ratio to N = 1. The vocabulary is the test
tokenizer's 512 tokens, so the output head costs far less than SmolLM2's 49 152-row head: an
upper bound on the batching ratio of the real model.

    PYTHONPATH=src:tests python benchmarks/synthetic_batch.py --threads 2 --streams 1 2 4 8 16
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_util import machine_info
from synthetic_prefill import MIX_Q4_1, write_model

import metallic
import tiny_models as tm


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "synthetic-smollm2-q4_1.gguf"
        write_model(path, 30, 576, 1536, 9, 3, mix=MIX_Q4_1)
        rng = np.random.default_rng(2)
        print("| streams | tok/s | x one stream |")
        print("|---:|---:|---:|")
        base = None
        for n in args.streams:
            prompts = [[int(t) for t in rng.integers(3, 500, 32)] for _ in range(n)]
            with metallic.load(
                path, device="cpu", threads=args.threads, parallel=n, context_length=128
            ) as m:
                kw = {
                    "max_tokens": args.max_tokens,
                    "temperature": 0,
                    "logit_bias": {tm.EOS_ID: -100.0},
                }
                m.batch_generate(prompts[:1], max_tokens=4, temperature=0)  # warm-up
                t0 = time.perf_counter()
                out = m.batch_generate(prompts, **kw)
                dt = time.perf_counter() - t0
            tokens = sum(r.generation_tokens for r in out.responses)
            rate = tokens / dt
            base = base or rate
            results.append({"streams": n, "tokens": tokens, "seconds": dt, "tok_s": rate})
            print(f"| {n} | {rate:.1f} | {rate / base:.2f}x |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"machine": machine_info(), "threads": args.threads, "results": results},
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
