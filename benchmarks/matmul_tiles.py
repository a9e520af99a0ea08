"""Prefill matmul kernels side by side: the SIMD kernels vs the AMX-INT8 tiles (native/cpu/amx.h)
on repacked weights of real models' layer shapes, per token count and thread count.

Each cell is the median of `--repeats` runs of one device matmul op after a warm-up
(kernels.matmul_seconds), so the figures are the kernels' own, without a model around them.
Weights are kquant_bench.py's random blocks: the kernels' speed does not depend on the values.
Where the AMX tiles are not usable (no AMX, or a build for another CPU) only the SIMD column is
measured and the reason is printed.

    PYTHONPATH=src python benchmarks/matmul_tiles.py --threads 1 2 --tokens 16 64 256 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from bench_util import machine_info
from kquant_bench import random_weights

from metallic import _core
from metallic.dtypes import DType

K = _core.kernels
Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = DType.Q4_0, DType.Q4_1, DType.Q5_0, DType.Q5_1, DType.Q8_0
Q4_K, Q5_K, Q6_K = DType.Q4_K, DType.Q5_K, DType.Q6_K
# (label, dtype, rows, cols): the layer shapes of the models users run, in their files' types.
SHAPES = [
    ("smollm2-135m ffn_up Q4_1", Q4_1, 1536, 576),
    ("gemma3-270m ffn_gate Q5_0", Q5_0, 2048, 640),
    ("qwen2-0.5b ffn_up Q5_0", Q5_0, 4864, 896),
    ("qwen2-0.5b attn_q Q8_0", Q8_0, 896, 896),
    ("qwen2-0.5b ffn_down Q4_K", Q4_K, 896, 4864),
    ("qwen2-0.5b ffn_down Q6_K", Q6_K, 896, 4864),
    ("llama-1b ffn_up Q4_K", Q4_K, 8192, 2048),
    ("llama-1b attn_q Q5_K", Q5_K, 2048, 2048),
    ("llama-1b ffn_down Q6_K", Q6_K, 2048, 8192),
    ("llama-1b attn_o Q4_0", Q4_0, 2048, 2048),
    ("llama-1b attn_o Q5_1", Q5_1, 2048, 2048),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--tokens", type=int, nargs="+", default=[8, 16, 32, 64, 256])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--shapes", nargs="*", help="substrings of the shape labels to run (default: all)"
    )
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    if not K.simd_available():
        print("this build has no SIMD kernels: nothing to compare", file=sys.stderr)
        return 1
    usable, reason = K.amx_status()
    if not usable:
        print(f"AMX tiles not usable ({reason}): SIMD only", file=sys.stderr)
    rng = np.random.default_rng(0)
    rows_out = []
    print("| shape | threads | tokens | simd GMAC/s | amx GMAC/s | amx / simd |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, dtype, rows, cols in SHAPES:
        if args.shapes and not any(s in label for s in args.shapes):
            continue
        w = random_weights(dtype, rows, cols, rng)
        for threads in args.threads:
            for nt in args.tokens:
                x = rng.standard_normal((nt, cols)).astype(np.float32)
                macs = rows * cols * nt
                simd = K.matmul_seconds(dtype, w, rows, cols, x, threads, "simd", args.repeats)
                amx = (
                    K.matmul_seconds(dtype, w, rows, cols, x, threads, "amx", args.repeats)
                    if usable
                    else None
                )
                row = {"shape": label, "rows": rows, "cols": cols, "threads": threads, "tokens": nt}
                row |= {"simd_s": simd, "amx_s": amx, "simd_gmacs": macs / simd / 1e9}
                row["amx_gmacs"] = macs / amx / 1e9 if amx else None
                rows_out.append(row)
                a = f"{row['amx_gmacs']:.1f}" if amx else "-"
                r = f"{simd / amx:.2f}x" if amx else "-"
                print(
                    f"| {label} | {threads} | {nt} | {row['simd_gmacs']:.1f} | {a} | {r} |",
                    flush=True,
                )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"machine": machine_info(), "amx": [usable, reason], "results": rows_out},
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
