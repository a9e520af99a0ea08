"""Speculative decoding benchmark: generation tok/s with and without drafts, same model and text.

    python benchmarks/spec_bench.py [-m smollm2|gemma-3-270m|PATH] [-n 128] [-r 3] [-t 2]
        [--draft prompt-lookup|MODEL] [--num-draft-tokens 6] [--out PATH]

Each prompt runs greedy (temperature 0) for -n tokens, plain and with the draft, interleaved,
-r times; the figure is the median generation tok/s of each (GenerationResponse.generation_tps of
the last token, prompt excluded) and their ratio. The outputs are checked to be the same tokens.
Prompts: outputs that repeat their input (quoting a paragraph, a code edit, continuing a table)
and free text. The goal (issue #14): >= 2x on repetitive outputs, >= 0.95x on free text.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench import resolve_model  # noqa: E402
from bench_util import machine_info  # noqa: E402

PARAGRAPH = (
    "The committee met on Tuesday to review the budget for the coming year. After a long "
    "discussion, the members agreed to increase funding for the library, to repair the roof of "
    "the community hall, and to hire two more teachers for the primary school. The chair thanked "
    "everyone for their patience and closed the meeting at nine in the evening."
)
CODE = (
    "def total_price(items):\n    result = 0\n    for item in items:\n"
    "        result += item.price * item.quantity\n    return result\n\n\n"
    "def total_weight(items):\n    result = 0\n    for item in items:\n"
    "        result += item.weight * item.quantity\n    return result\n"
)
TABLE = (
    "| id | name | city | score |\n|---|---|---|---|\n| 1 | Alice | Paris | 91 |\n"
    "| 2 | Bob | Berlin | 85 |\n| 3 | Carol | Madrid | 78 |\n| 4 | Dave | Rome | 88 |\n| 5 |"
)
PROMPTS = {  # name: (kind, text); kind "repetitive" or "free"
    "quote": ("repetitive", f"Text: {PARAGRAPH}\n\nThe same text, copied exactly:\n"),
    "code-edit": (
        "repetitive",
        f"{CODE}\n# The same code with `result` renamed to `acc`:\n\n",
    ),
    "table": ("repetitive", TABLE),
    "story": ("free", "Once upon a time, in a small village by the sea, there lived"),
    "essay": ("free", "The most important invention of the twentieth century was"),
}


def run(args: argparse.Namespace) -> dict:
    import metallic

    path = resolve_model(args.model)
    model = metallic.load(path, threads=args.threads, context_length=1024)
    draft = args.draft
    draft_model = None
    if draft != "prompt-lookup":
        draft_model = metallic.load(resolve_model(draft), threads=args.threads, context_length=1024)
        draft = draft_model
    rows = {}
    try:
        for name, (kind, text) in PROMPTS.items():
            plain, spec, acc = [], [], []
            for _ in range(args.repeat):
                model.reset_cache()
                a = list(model.stream_generate(text, max_tokens=args.n_gen))
                model.reset_cache()
                b = list(
                    model.stream_generate(
                        text,
                        max_tokens=args.n_gen,
                        draft=draft,
                        num_draft_tokens=args.num_draft_tokens,
                    )
                )
                if [r.token for r in a] != [r.token for r in b]:
                    raise RuntimeError(f"[spec_bench] {name}: the outputs differ")
                plain.append(a[-1].generation_tps)
                spec.append(b[-1].generation_tps)
                acc.append(b[-1].accepted_tokens / max(1, b[-1].draft_tokens))
            p, s = statistics.median(plain), statistics.median(spec)
            rows[name] = {
                "kind": kind,
                "tokens": len(a),
                "plain_tps": p,
                "draft_tps": s,
                "speedup": s / p,
                "acceptance": statistics.median(acc),
                "runs": {"plain": plain, "draft": spec},
            }
            print(
                f"# {name} ({kind}): {p:.1f} -> {s:.1f} tok/s ({s / p:.2f}x), "
                f"{len(a)} tokens, acceptance {rows[name]['acceptance']:.0%}",
                file=sys.stderr,
            )
    finally:
        model.close()
        if draft_model is not None:
            draft_model.close()
    return {
        "model": Path(path).name,
        "draft": args.draft,
        "num_draft_tokens": args.num_draft_tokens,
        "n_gen": args.n_gen,
        "threads": args.threads,
        "machine": machine_info(),
        "prompts": rows,
    }


def report(result: dict) -> str:
    lines = [
        f"{result['model']}, draft {result['draft']} (k <= {result['num_draft_tokens']}), "
        f"{result['machine']['cpu_model']}, {result['threads']} threads, greedy, "
        f"{result['n_gen']} tokens",
        "",
        "| prompt | kind | tokens | plain tok/s | draft tok/s | speed-up | acceptance |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in result["prompts"].items():
        lines.append(
            f"| {name} | {r['kind']} | {r['tokens']} | {r['plain_tps']:.1f} | "
            f"{r['draft_tps']:.1f} | {r['speedup']:.2f}x | {r['acceptance']:.0%} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-m", "--model", default="smollm2")
    p.add_argument("-n", "--n-gen", type=int, default=128)
    p.add_argument("-r", "--repeat", type=int, default=3)
    p.add_argument("-t", "--threads", type=int, default=2)
    p.add_argument("--draft", default="prompt-lookup")
    p.add_argument("--num-draft-tokens", type=int, default=6)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.n_gen < 1 or args.repeat < 1 or args.threads < 1:
        p.error("-n, -r and -t: expected integers >= 1")
    result = run(args)
    print(report(result))
    day = datetime.date.today().isoformat()
    out = Path(args.out) if args.out else HERE / "results" / f"spec-{result['model']}-{day}.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"# raw numbers: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
