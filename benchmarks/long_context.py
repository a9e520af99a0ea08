"""Long-context cost: prefill speed, decode speed at depth, KV cache size and peak RSS per context.

Each context length runs in a fresh process (its own peak RSS): load with context_length C, prefill
a prompt of ``fill * C`` random token ids, then decode ``-n`` tokens at that depth. Reports the KV
cache's allocation next to what a cache of every position in every layer would take (sliding-window
layers keep rings of window + batch_size rows), and the machine (CPU model and flags).

    PYTHONPATH=src python3 benchmarks/long_context.py -m gemma-3-270m -c 4096 32768 -t 2

``--vs-llama-cpp`` runs llama.cpp (llama-cpp-python, f16 KV, n_batch = n_ubatch = 512, its default
micro-batch) on the same GGUF and the same token ids in its own fresh process per context, and
prints the ratios.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_util  # noqa: E402

MIB = 1024 * 1024


def prompt_ids(context: int, fill: float, n_gen: int, n_vocab: int) -> np.ndarray:
    """The same random prompt for both engines: ``fill * context`` ids, room left for n_gen."""
    n_prompt = max(1, min(context - n_gen - 1, int(context * fill)))
    return np.random.default_rng(0).integers(10, n_vocab, n_prompt).astype(np.int32)


def one(model_name: str, context: int, threads: int, fill: float, n_gen: int) -> dict:
    import metallic

    with metallic.load(model_name, device="cpu", threads=threads, context_length=context) as model:
        cfg = model._bundle.config
        engine = model._engine
        ids = prompt_ids(context, fill, n_gen, cfg["n_vocab"])
        n_prompt = len(ids)
        out = np.empty((1, cfg["n_vocab"]), np.float32)
        t0 = time.perf_counter()
        engine.forward(ids, 0, out, False)
        pp = time.perf_counter() - t0
        tok = int(out[0].argmax())
        t0 = time.perf_counter()
        for i in range(n_gen):
            engine.forward(np.array([tok], np.int32), n_prompt + i, out, False)
            tok = int(out[0].argmax())
        tg = time.perf_counter() - t0
        elem = 2 if engine.kv_dtype == int(metallic.dtypes.DType.F16) else 4
        full = cfg["n_layer"] * 2 * cfg["n_head_kv"] * cfg["head_dim"] * context * elem
        return {
            "context": context,
            "n_prompt": n_prompt,
            "pp_tok_s": n_prompt / pp,
            "tg_tok_s": n_gen / tg,
            "kv_cache_mib": engine.kv_cache_bytes / MIB,
            "kv_full_mib": full / MIB,
            "peak_rss_mib": bench_util.peak_rss_bytes() / MIB,
        }


def one_llama(model_name: str, context: int, threads: int, fill: float, n_gen: int) -> dict:
    from bench_llama import LlamaRunner

    from metallic import registry

    runner = LlamaRunner(
        registry.resolve(model_name), threads=threads, n_ctx=context, n_batch=512, flash_attn=False
    )
    ids = prompt_ids(context, fill, n_gen, runner.n_vocab).tolist()
    n_prompt = len(ids)
    pp = runner.prompt(ids)
    token = runner._argmax()
    t0 = time.perf_counter()
    for _ in range(n_gen):
        runner.llm.eval([token])
        token = runner._argmax()
    tg = time.perf_counter() - t0
    out = {
        "context": context,
        "n_prompt": n_prompt,
        "pp_tok_s": n_prompt / pp,
        "tg_tok_s": n_gen / tg,
        "peak_rss_mib": bench_util.peak_rss_bytes() / MIB,
    }
    runner.close()
    return out


def run_one(args: argparse.Namespace, context: int, engine: str) -> dict:
    cmd = [sys.executable, __file__, "-m", args.model, "-t", str(args.threads)]
    cmd += ["--fill", str(args.fill), "-n", str(args.n_gen), "--one", str(context)]
    cmd += ["--engine", engine]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-m", "--model", default="gemma-3-270m")
    ap.add_argument("-c", "--contexts", type=int, nargs="+", default=[4096, 32768])
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--fill", type=float, default=1.0, help="prompt share of the context")
    ap.add_argument("-n", "--n-gen", type=int, default=32)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--vs-llama-cpp", action="store_true", help="also run llama.cpp, same ids")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--engine", default="metallic", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one is not None:
        fn = one_llama if args.engine == "llama" else one
        print(json.dumps(fn(args.model, args.one, args.threads, args.fill, args.n_gen)))
        return 0
    rows = []
    for c in args.contexts:
        rows.append(run_one(args, c, "metallic"))
        r = rows[-1]
        print(
            f"ctx {r['context']:>6}: pp{r['n_prompt']} {r['pp_tok_s']:7.1f} tok/s, "
            f"tg{args.n_gen} at depth {r['tg_tok_s']:6.1f} tok/s, KV {r['kv_cache_mib']:7.1f} MiB "
            f"(every position: {r['kv_full_mib']:7.1f}), peak RSS {r['peak_rss_mib']:7.1f} MiB",
            flush=True,
        )
        if args.vs_llama_cpp:
            r["llama_cpp"] = ll = run_one(args, c, "llama")
            print(
                f"  llama.cpp: pp {ll['pp_tok_s']:7.1f} tok/s ({r['pp_tok_s'] / ll['pp_tok_s']:.2f}x), "
                f"tg {ll['tg_tok_s']:6.1f} tok/s ({r['tg_tok_s'] / ll['tg_tok_s']:.2f}x), "
                f"peak RSS {ll['peak_rss_mib']:7.1f} MiB",
                flush=True,
            )
    if args.json:
        info = {"machine": bench_util.machine_info(), "model": args.model, "threads": args.threads}
        Path(args.json).write_text(json.dumps({**info, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
