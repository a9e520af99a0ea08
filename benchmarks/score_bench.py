"""Prompt scoring throughput: ``batch_generate(prompts, max_tokens=0, prompt_logprobs=k)`` (what
``/v1/completions`` with ``echo`` and ``logprobs`` runs) against the same prompts' prefill with
one generated token, in one process, alternating run by run; and the share of the scoring run
spent in the NumPy scores (metallic.prompt_scores.score_rows).

    PYTHONPATH=src python benchmarks/score_bench.py -m smollm2 -t 2 --prompts 8 --tokens 256
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
from metallic import prompt_scores


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default="smollm2-135m-instruct")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--top", type=int, nargs="+", default=[0, 5], help="prompt_logprobs k")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None, help="write the results here")
    a = ap.parse_args(argv)
    path = resolve_model(a.model)
    spent = [0.0]
    real = prompt_scores.score_rows

    def timed(*args, **kw):
        t = time.perf_counter()
        try:
            return real(*args, **kw)
        finally:
            spent[0] += time.perf_counter() - t

    prompt_scores.score_rows = timed
    rows = []
    with metallic.load(
        path,
        device="cpu",
        threads=a.threads,
        context_length=a.tokens + 8,
        parallel=a.prompts,
    ) as m:
        rng = np.random.default_rng(0)
        hi = min(40000, m.tokenizer.vocab_size)
        prompts = [[int(t) for t in rng.integers(100, hi, a.tokens)] for _ in range(a.prompts)]
        runs = {"prefill": []} | {f"scored k={k}": [] for k in a.top}
        for _ in range(a.repeats):
            for name in runs:
                spent[0] = 0.0
                t = time.perf_counter()
                if name == "prefill":
                    m.batch_generate(prompts, max_tokens=1)
                else:
                    k = int(name.split("=")[1])
                    m.batch_generate(prompts, max_tokens=0, prompt_logprobs=k)
                runs[name].append((time.perf_counter() - t, spent[0]))
    n = a.prompts * a.tokens
    print("| run | tok/s (best / worst) | NumPy scores s (of the best run) |")
    print("|---|---:|---:|")
    for name, res in runs.items():
        best = min(res)
        worst = max(res)
        print(
            f"| {name} | {n / best[0]:.0f} / {n / worst[0]:.0f} | {best[1]:.2f} of {best[0]:.2f} |"
        )
        rows.append({"run": name, "seconds": [r[0] for r in res], "scores_s": [r[1] for r in res]})
    if a.json:
        out = {"machine": machine_info(), "args": vars(a), "tokens": n, "runs": rows}
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
