"""Tables for ``bench.py``: a detailed per-engine table (mean ± sd) and the README table."""

from __future__ import annotations

import statistics

from bench_util import MIB, mean_sd

ENGINES = (("metallic", "metallic"), ("llama_cpp", "llama.cpp"))


def summary(result: dict) -> dict:
    """engine -> figure -> (mean, sd) for the headline figures."""
    out = {}
    for name, eng in result["engines"].items():
        runs = eng["runs"]
        row = {k: mean_sd(runs[k]) for k in ("pp_tps", "tg_tps", "ttft_s", "decode_gbs")}
        if "stream_tps" in runs:
            row["stream_tps"] = mean_sd(runs["stream_tps"])
        for k in ("load_s", "rss_base", "rss_after_load", "peak_rss"):
            row[k] = mean_sd([p[k] for p in eng["probes"]])
        out[name] = row
    return out


def paired_ratios(result: dict) -> dict[str, float]:
    """Median over repetitions of metallic / llama.cpp for pp, tg and TTFT, each repetition's two
    figures taken back to back (robust to other jobs slowing one repetition of a shared machine)."""
    eng = result["engines"]
    if "llama_cpp" not in eng:
        return {}
    out = {}
    for key in ("pp_tps", "tg_tps", "ttft_s"):
        pairs = zip(eng["metallic"]["runs"][key], eng["llama_cpp"]["runs"][key], strict=True)
        out[key] = statistics.median(a / b for a, b in pairs)
    return out


def _rows(result: dict) -> list[tuple[str, str, float, bool]]:
    """(label, summary key, scale, higher is better) for each table row."""
    a = result["args"]
    bw = result["bandwidth"]["best_gbs"]
    return [
        (f"pp{a['n_prompt']} tok/s", "pp_tps", 1.0, True),
        (f"tg{a['n_gen']} tok/s", "tg_tps", 1.0, True),
        (f"tg{a['n_gen']} tok/s via stream_generate (API)", "stream_tps", 1.0, True),
        ("load s", "load_s", 1.0, False),
        (f"TTFT ms (p{a['n_prompt']})", "ttft_s", 1e3, False),
        ("RSS after load MiB", "rss_after_load", 1 / MIB, False),
        ("peak RSS MiB", "peak_rss", 1 / MIB, False),
        ("decode GB/s", "decode_gbs", 1.0, True),
        (f"decode % of measured bandwidth ({bw:.1f} GB/s)", "decode_gbs", 100 / bw, True),
    ]


def _cell(stats: dict, key: str, scale: float, with_sd: bool) -> str:
    if key not in stats:
        return "—"
    m, s = stats[key]
    digits = 3 if key == "load_s" else 1
    return (
        f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}" if with_sd else f"{m * scale:.{digits}f}"
    )


def _ratio(summ: dict, key: str) -> str:
    if "llama_cpp" not in summ or key not in summ["llama_cpp"] or key not in summ["metallic"]:
        return "—"
    peer = summ["llama_cpp"][key][0]
    return f"{summ['metallic'][key][0] / peer:.2f}" if peer else "—"


def markdown(result: dict, with_sd: bool = False) -> str:
    """The README table: | model | test | metallic | llama.cpp | ratio (metallic / llama.cpp) |."""
    summ = result.get("summary") or summary(result)
    model = result["model"]["name"].removesuffix(".gguf")
    lines = [
        "| model | test | metallic tok/s | llama.cpp tok/s | ratio |",
        "|---|---|---:|---:|---:|",
    ]
    for label, key, scale, _ in _rows(result):
        cells = [_cell(summ.get(e, {}), key, scale, with_sd) for e, _ in ENGINES]
        lines.append(f"| {model} | {label} | {cells[0]} | {cells[1]} | {_ratio(summ, key)} |")
    return "\n".join(lines) + "\n\n" + footer(result)


def detailed(result: dict) -> str:
    """Every headline figure as mean ± sd over the repetitions, plus the accounting."""
    return markdown(result, with_sd=True)


def footer(result: dict) -> str:
    """The run's conditions: machine, threads, bytes per token, bandwidth, agreement."""
    a, m, bpt = result["args"], result["machine"], result["bytes_per_token"]
    bw = result["bandwidth"]
    llama = result["engines"].get("llama_cpp", {}).get("settings")
    parts = [
        f"{m['cpu_model']}, {a['threads']} threads ({m['cpus_allowed']} CPUs allowed), {m['date']}, "
        f"metallic {m['metallic']} ({m['metallic_git']}), llama-cpp-python {m['llama_cpp_python']}, "
        f"n_ctx {result['n_ctx']}, f16 KV cache, {a['repetitions']} repetitions (mean; ± sd).",
        "Ratio = metallic / llama.cpp (> 1 is better for metallic on tok/s and GB/s rows, worse on "
        "s, ms and MiB rows).",
        f"Bytes per decoded token: {bpt['total'] / 1e6:.2f} MB = weights {bpt['weights'] / 1e6:.2f} MB "
        f"(tied head {bpt['tied_head'] / 1e6:.2f} MB, embedding row {bpt['embedding_row']} B) + KV "
        f"{bpt['kv'] / 1e6:.2f} MB at a mean context of {bpt['kv_mean_context']:.1f} positions.",
        f"Measured read bandwidth: best {bw['best_gbs']:.1f} GB/s of {len(bw['runs_gbs'])} runs "
        f"({bw['mib']} MiB, {bw['threads']} threads).",
    ]
    set_aside = len(result["engines"]["metallic"].get("discarded", []))
    parts.append(
        f"Repetitions set aside because other processes used > {a['busy']:.0%} of the CPUs "
        f"(redone, kept in the JSON): {set_aside}."
    )
    paired = result.get("paired_ratios") or paired_ratios(result)
    if paired:
        parts.append(
            "Median of per-repetition (paired) ratios: "
            + ", ".join(f"{k.split('_')[0]} {v:.2f}" for k, v in paired.items())
            + "."
        )
    disp = result.get("dispatches")
    if disp:
        m_, c_ = disp["metal-emulated"], disp["cpu"]
        parts.append(
            f"Metal plan (device=metal-emulated, same launches as device=metal): "
            f"{m_['decode_per_layer']:g} kernel dispatches per layer per decoded token "
            f"({m_['decode_layer_bytes'] / m_['n_layer'] / 1e6:.2f} MB bound per layer), "
            f"{m_['prefill_per_layer']:g} per layer for a {m_['prefill_tokens']}-token prefill; "
            f"cpu device: {c_['decode_per_layer']:g} ops per layer."
        )
    if llama:
        parts.append(
            f"llama.cpp: n_batch {llama['n_batch']}, n_ubatch {llama['n_ubatch']}, flash_attn "
            f"{llama['flash_attn']}; greedy tg tokens agree for the first "
            f"{result.get('greedy_agree_prefix')} of {a['n_gen']}."
        )
    return "\n".join(parts)
