"""Cost of a quantized KV cache: KL divergence and top-1 agreement against the f32 cache, KV bytes
per token and decode speed at depth, per ``kv_cache_dtype`` (f32, f16, q8_0, q4_0).

One deterministic text (this repository's README.md, docs/*.md and benchmarks/README.md, in that
order) is teacher-forced through one engine per dtype in lockstep, in chunks of ``--stride``
tokens; the logits of each chunk's last position are compared with the f32 engine's at once (no
logits are kept). A causal model's logits at position p depend only on tokens 0..p, so the
positions below 2048 of the 8k run are the 2k-context results ("2k": sampled positions < 2048,
"8k": < 8192). When the text reaches a depth in ``--contexts``, each engine decodes ``-n``
greedy tokens there, token by token across the dtypes (median tok/s); teacher forcing then
resumes, overwriting those rows.

    PYTHONPATH=src python3 benchmarks/kv_quant_cost.py -m smollm2 gemma-3-270m -t 2 \
        --json benchmarks/results/kv-quant-cost-2026-12-04.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import bench_util  # noqa: E402

DTYPES = ("f32", "f16", "q8_0", "q4_0")
TEXT_FILES = ("README.md", "docs/CONTRACTS.md", "docs/serving.md", "benchmarks/README.md")


def text() -> str:
    return "\n\n".join((ROOT / f).read_text() for f in TEXT_FILES)


def log_softmax(x: np.ndarray) -> np.ndarray:
    z = x.astype(np.float64)
    z -= z.max()
    return z - np.log(np.exp(z).sum())


def kl(ref_logits: np.ndarray, logits: np.ndarray) -> float:
    """KL(softmax(ref) || softmax(other)) in nats."""
    lp, lq = log_softmax(ref_logits), log_softmax(logits)
    return float((np.exp(lp) * (lp - lq)).sum())


def decode_speed(engines: dict, depth: int, n_gen: int, first: int) -> dict[str, float]:
    """Median tok/s of n_gen greedy decodes at positions depth, depth + 1, .. per engine, token by
    token across the engines (a load change on the machine hits every dtype alike)."""
    times: dict[str, list[float]] = {kv: [] for kv in engines}
    toks = dict.fromkeys(engines, first)
    outs = {kv: np.empty((1, e.n_vocab), np.float32) for kv, e in engines.items()}
    for i in range(n_gen):
        for kv, e in engines.items():
            t0 = time.perf_counter()
            e.forward(np.array([toks[kv]], np.int32), depth + i, outs[kv], False)
            times[kv].append(time.perf_counter() - t0)
            toks[kv] = int(outs[kv][0].argmax())
    return {kv: 1.0 / statistics.median(ts) for kv, ts in times.items()}


def run_model(name: str, contexts: list[int], threads: int, stride: int, n_gen: int) -> dict:
    import metallic

    top = max(contexts)
    models = {}
    try:
        for kv in DTYPES:
            models[kv] = metallic.load(
                name, device="cpu", threads=threads, context_length=top + n_gen, kv_cache_dtype=kv
            )
        engines = {kv: m._engine for kv, m in models.items()}
        ids = models["f32"].tokenizer.encode(text())
        if len(ids) < top:
            raise SystemExit(f"{name}: the text has {len(ids)} tokens, fewer than {top}")
        ids = np.asarray(ids[:top], np.int32)
        outs = {kv: np.empty((1, e.n_vocab), np.float32) for kv, e in engines.items()}
        kls: dict[str, list[float]] = {kv: [] for kv in DTYPES}
        top1: dict[str, list[bool]] = {kv: [] for kv in DTYPES}
        speed: dict[int, dict[str, float]] = {}
        t0 = time.perf_counter()
        for s in range(0, top, stride):
            for kv, e in engines.items():
                e.forward(ids[s : s + stride], s, outs[kv], False)
            want = outs["f32"][0]
            for kv in DTYPES:
                kls[kv].append(kl(want, outs[kv][0]))
                top1[kv].append(bool(outs[kv][0].argmax() == want.argmax()))
            if s + stride in contexts:
                speed[s + stride] = decode_speed(engines, s + stride, n_gen, int(want.argmax()))
        rows = {}
        for kv, e in engines.items():
            rows[kv] = {}
            for c in contexts:
                n = c // stride  # samples at positions stride - 1, 2 * stride - 1, .. < c
                rows[kv][c] = {
                    "kl_mean": float(np.mean(kls[kv][:n])),
                    "kl_max": float(np.max(kls[kv][:n])),
                    "top1": float(np.mean(top1[kv][:n])),
                    "positions": n,
                    "kv_bytes_per_token": e.kv_bytes(c) / c,
                    "decode_tok_s": speed[c][kv],
                }
        return {
            "model": name,
            "tokens": top,
            "stride": stride,
            "seconds": time.perf_counter() - t0,
            "rows": rows,
        }
    finally:
        for m in models.values():
            m.close()


def table(res: dict, contexts: list[int]) -> str:
    lines = [
        f"{res['model']}: {res['tokens']} tokens teacher-forced, every {res['stride']}th position "
        "against the f32 cache",
        "| KV | ctx | KL mean | KL max | top-1 | KV bytes/token | decode tok/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for kv in DTYPES:
        for c in contexts:
            r = res["rows"][kv][c]
            ctx = f"{c // 1024}k" if c % 1024 == 0 else str(c)
            lines.append(
                f"| {kv} | {ctx} | {r['kl_mean']:.2e} | {r['kl_max']:.2e} | "
                f"{100 * r['top1']:.1f}% | {r['kv_bytes_per_token']:.0f} | {r['decode_tok_s']:.1f} |"
            )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-m", "--models", nargs="+", default=["smollm2", "gemma-3-270m"])
    ap.add_argument("-c", "--contexts", type=int, nargs="+", default=[2048, 8192])
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--stride", type=int, default=32, help="compare every STRIDE-th position")
    ap.add_argument("-n", "--n-gen", type=int, default=16, help="decode tokens timed per depth")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    if any(c % args.stride for c in args.contexts):
        ap.error("every context must be a multiple of --stride")
    results = []
    for name in args.models:
        res = run_model(name, sorted(args.contexts), args.threads, args.stride, args.n_gen)
        results.append(res)
        print(table(res, sorted(args.contexts)), f"\n({res['seconds']:.0f} s)\n", flush=True)
    if args.json:
        info = {
            "machine": bench_util.machine_info(),
            "threads": args.threads,
            "stride": args.stride,
        }
        Path(args.json).write_text(json.dumps({**info, "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
