"""Prefill speed of a synthetic Q4_K_M-like model with the SIMD kernels vs the AMX-INT8 tiles.

For machines without the registry's model files (a lent device machine): writes a llama-shaped
GGUF of random blocks in a Q4_K_M-like mix (Q4_K attention and gate/up, Q6_K attn_v and
ffn_down, Q8_0 output head), then times ``model.logits`` over prompts of each length with
METALLIC_AMX=0 (SIMD) and METALLIC_AMX=1 (tiles where usable) in the same run. The weights are
random, so only the speed means anything. Uses the test suite's GGUF writer (tests/tiny_models).

    PYTHONPATH=src:tests python benchmarks/synthetic_prefill.py --threads 2 --tokens 64 256
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench_util import machine_info  # noqa: E402
from gguf import GGMLQuantizationType as GT  # noqa: E402
from kquant_bench import random_weights  # noqa: E402

import metallic  # noqa: E402
import tiny_models as tm  # noqa: E402
from metallic import _core  # noqa: E402
from metallic.dtypes import DType  # noqa: E402

# GGUF name part -> storage (Q4_K_M-like), and SmolLM2's (every linear layer Q4_1).
MIX = {
    "attn_q": "q4_k",
    "attn_k": "q4_k",
    "attn_output": "q4_k",
    "ffn_gate": "q4_k",
    "ffn_up": "q4_k",
}
MIX |= {"attn_v": "q6_k", "ffn_down": "q6_k", "token_embd": "q8_0", "output": "q8_0"}
MIX_Q4_1 = {k: "q4_1" for k in MIX} | {k: MIX[k] for k in ("token_embd", "output")}
DTYPES = {"q4_k": DType.Q4_K, "q6_k": DType.Q6_K, "q8_0": DType.Q8_0, "q4_1": DType.Q4_1}


def write_model(
    path: Path, layers: int, hidden: int, ffn: int, heads: int, kv_heads: int, mix: dict = MIX
) -> None:
    vocab = 512
    sizes = {"hidden_size": hidden, "intermediate_size": ffn, "head_dim": hidden // heads}
    sizes |= {"num_attention_heads": heads, "num_key_value_heads": kv_heads}
    sizes |= {"num_hidden_layers": layers, "vocab_size": vocab}
    cfg = tm.make_config("llama", False, "f32", **sizes)
    rng = np.random.default_rng(0)
    stored, dtypes = {}, {}
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "lm_head.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        hd = hidden // heads
        shapes |= {
            p + "self_attn.q_proj.weight": (heads * hd, hidden),
            p + "self_attn.k_proj.weight": (kv_heads * hd, hidden),
        }
        shapes |= {
            p + "self_attn.v_proj.weight": (kv_heads * hd, hidden),
            p + "self_attn.o_proj.weight": (hidden, heads * hd),
        }
        shapes |= {
            p + "mlp.gate_proj.weight": (ffn, hidden),
            p + "mlp.up_proj.weight": (ffn, hidden),
        }
        shapes |= {p + "mlp.down_proj.weight": (hidden, ffn)}
        for norm in ("input_layernorm", "post_attention_layernorm"):
            stored[p + norm + ".weight"] = np.ones(hidden, np.float32).view(np.uint8)
            dtypes[p + norm + ".weight"] = "f32"
    stored["model.norm.weight"] = np.ones(hidden, np.float32).view(np.uint8)
    dtypes["model.norm.weight"] = "f32"
    for name, (rows, cols) in shapes.items():
        dt = mix[tm.gguf_name(name).split(".")[-2]]
        stored[name] = random_weights(DTYPES[dt], rows, cols, rng).reshape(rows, -1)
        dtypes[name] = dt
    # the writer looks raw GGML types up here
    tm.STORAGE = tm.STORAGE | {k: GT(int(v)) for k, v in DTYPES.items()}
    tm._write_gguf(path, cfg, stored, dtypes, tm.trained_tokenizer_json("llama", vocab))


def prefill_seconds(path: Path, amx: str, threads: int, tokens: list[int], repeats: int) -> float:
    os.environ["METALLIC_AMX"] = amx
    with metallic.load(
        path, device="cpu", threads=threads, context_length=max(tokens) + 8
    ) as model:
        ids = [int(t) for t in np.random.default_rng(1).integers(3, 500, max(tokens))]
        model.logits(ids[:16])  # warm-up: pages, pool threads
        out = []
        for n in tokens:
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                model.logits(ids[:n])
                times.append(time.perf_counter() - t0)
            out.append(statistics.median(times))
        return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[2])
    ap.add_argument("--tokens", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--ffn", type=int, default=2816)
    ap.add_argument("--heads", type=int, nargs=2, default=[16, 4], metavar=("Q", "KV"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    usable, reason = _core.kernels.amx_status()
    print(f"AMX tiles usable: {usable} {reason}", file=sys.stderr)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "synthetic-q4_k_m.gguf"
        write_model(path, args.layers, args.hidden, args.ffn, *args.heads)
        print(
            f"model: {path.stat().st_size / 2**20:.0f} MiB, {args.layers} layers, hidden {args.hidden}, ffn {args.ffn}"
        )
        print("| threads | tokens | simd tok/s | amx tok/s | amx / simd |")
        print("|---:|---:|---:|---:|---:|")
        for threads in args.threads:
            simd = prefill_seconds(path, "0", threads, args.tokens, args.repeats)
            amx = prefill_seconds(path, "1", threads, args.tokens, args.repeats)
            for n, s, a in zip(args.tokens, simd, amx, strict=True):
                results.append({"threads": threads, "tokens": n, "simd_s": s, "amx_s": a})
                print(f"| {threads} | {n} | {n / s:.1f} | {n / a:.1f} | {s / a:.2f}x |", flush=True)
    if args.json:
        shape = {"layers": args.layers, "hidden": args.hidden, "ffn": args.ffn, "heads": args.heads}
        with open(args.json, "w") as f:
            json.dump(
                {
                    "machine": machine_info(),
                    "amx": [usable, reason],
                    "shape": shape,
                    "results": results,
                },
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
