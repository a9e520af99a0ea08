"""Tables and statistics of benchmarks/serve_bench.py: percentiles, per-level summaries, the
markdown tables and ratios (pure functions of the recorded numbers)."""

from __future__ import annotations

SERVERS = ("metallic", "llama-cpp")


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100), linear between order statistics (numpy's default); None
    for no values."""
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"[serve_bench] percentile: expected q in 0..100, got {q}")
    if not values:
        return None
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    return s[lo] + (s[min(lo + 1, len(s) - 1)] - s[lo]) * (pos - lo)


def summarize(records: list[dict], wall: float) -> dict:
    """The figures of one concurrency level from its per-request records."""
    ok = [r for r in records if r["error"] is None]
    gaps = [g for r in ok for g in r["chunk_gaps"]]
    ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
    prompt = [r["prompt_tokens"] for r in ok]
    gen = sum(r["completion_tokens"] for r in ok)
    ms = lambda v: None if v is None else v * 1e3  # noqa: E731
    return {
        "requests": len(records), "errors": len(records) - len(ok), "completion_tokens": gen,
        "prompt_tokens": sum(prompt) if ok and None not in prompt else None,
        "tokens_from": sorted({r["tokens_from"] for r in ok}), "wall_s": wall,
        "agg_tps": gen / wall if wall > 0 else None,
        "stream_tps_p50": percentile([r["decode_tps"] for r in ok if r["decode_tps"]], 50),
        "ttft_ms_p50": ms(percentile(ttft, 50)), "ttft_ms_p99": ms(percentile(ttft, 99)),
        "itl_ms_p50": ms(percentile(gaps, 50)), "itl_ms_p99": ms(percentile(gaps, 99)),
    }  # fmt: skip


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, None when either is missing or b is 0."""
    return a / b if a is not None and b else None


def _fmt(v, spec: str = ".1f") -> str:
    return "—" if v is None else format(v, spec)


def md_table(title: str, header: list[str], rows: list[list[str]]) -> str:
    """A markdown table under a ``###`` title, numbers right-aligned."""
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


COLUMNS = (  # (header, summary key, format) of a server's table
    ("requests", "requests", "d"), ("errors", "errors", "d"), ("gen tok", "completion_tokens", "d"),
    ("prompt tok", "prompt_tokens", "d"), ("wall s", "wall_s", ".2f"), ("tok/s", "agg_tps", ".1f"),
    ("stream tok/s p50", "stream_tps_p50", ".1f"), ("TTFT p50 ms", "ttft_ms_p50", ".1f"),
    ("TTFT p99 ms", "ttft_ms_p99", ".1f"), ("ITL p50 ms", "itl_ms_p50", ".1f"),
    ("ITL p99 ms", "itl_ms_p99", ".1f"), ("others' CPU", "foreign_cpu", ".0%"),
)  # fmt: skip


def server_table(name: str, levels: list[dict]) -> str:
    """Markdown table of one server's levels."""
    rows = [[str(lv["concurrency"])] + [_fmt(lv["summary"].get(k), f) for _, k, f in COLUMNS]
            for lv in levels]  # fmt: skip
    table = md_table(name, ["streams"] + [h for h, _, _ in COLUMNS], rows)
    if any("chunks" in lv["summary"]["tokens_from"] for lv in levels):
        table += "\n\nNo `usage` in the stream: generated tokens = non-empty content chunks."
    return table


def ratios(servers: dict) -> dict:
    """Per concurrency: each server's tok/s, metallic / llama.cpp, and each server's scaling
    (tok/s at c streams / tok/s at 1 stream)."""
    tps = {n: {lv["concurrency"]: lv["summary"]["agg_tps"] for lv in run["levels"]}
           for n, run in servers.items()}  # fmt: skip
    out = {}
    for c in sorted({c for v in tps.values() for c in v}):
        row = {f"{n}_tps": tps.get(n, {}).get(c) for n in SERVERS}
        row.update({f"{n}_scaling": ratio(tps[n].get(c), tps[n].get(1)) for n in tps})
        row["metallic_over_llama"] = ratio(row["metallic_tps"], row["llama-cpp_tps"])
        out[c] = row
    return out


def ratio_table(table: dict) -> str:
    """Markdown of ``ratios``."""
    keys = (("metallic_tps", ".1f"), ("llama-cpp_tps", ".1f"), ("metallic_over_llama", ".2f"),
            ("metallic_scaling", ".2f"), ("llama-cpp_scaling", ".2f"))  # fmt: skip
    header = ["streams", "metallic tok/s", "llama.cpp tok/s", "metallic / llama.cpp"]
    rows = [[str(c)] + [_fmt(r.get(k), f) for k, f in keys] for c, r in table.items()]
    title = "metallic / llama.cpp, and scaling N/1 (tok/s at N streams / tok/s at 1 stream)"
    return md_table(title, header + ["metallic N/1", "llama.cpp N/1"], rows)


def report(result: dict) -> str:
    """Markdown tables of a result dict."""
    m, a = result["machine"], result["args"]
    parts = [
        f"model {result['model']['name']}, {m['cpu_model']}, threads {a['threads']}, metallic "
        f"slots {a['parallel']}, max_tokens {a['max_tokens']}, endpoint {a['endpoint']}, "
        f"metallic {m['metallic']}, llama_cpp {m.get('llama_cpp_python')}"
    ]
    parts += [server_table(n, r["levels"]) for n, r in result["servers"].items()]
    parts.append(ratio_table(result["ratios"]))
    base = result["baseline"]
    if base is not None:
        first = (result["servers"].get("metallic") or {}).get("levels") or [{}]
        one = first[0]["summary"]["stream_tps_p50"] if first[0].get("concurrency") == 1 else None
        parts.append(
            f"stream_generate (in process): generation_tps {base['generation_tps']:.1f}, decode "
            f"{_fmt(base['decode_tps'])} tok/s (median of {len(base.get('runs', [0]))} prompts, "
            f"{base['generation_tokens']:.0f} tokens); "
            f"metallic-server 1 stream: decode {_fmt(one)} tok/s; server / in-process "
            f"{_fmt(ratio(one, base['decode_tps']), '.2f')} (goal >= 0.90)"
        )
    return "\n\n".join(parts)
