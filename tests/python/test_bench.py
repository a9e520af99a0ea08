"""Smoke test of benchmarks/bench.py on a tiny model: the parser, the bytes-per-token accounting
and one short run without llama.cpp. No timing is asserted."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import gguf
import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import bench  # noqa: E402
import bench_report  # noqa: E402
import bench_util  # noqa: E402

from tiny_models import make_model  # noqa: E402


@pytest.fixture(scope="module")
def tiny_q4_1(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("bench"), family="llama", dtype="q4_1", fmt="gguf")


def test_parser_defaults_and_short_flags():
    args = bench.build_parser().parse_args([])
    assert (args.n_prompt, args.n_gen, args.repetitions, args.threads) == (256, 128, 5, 2)
    assert not args.vs_llama_cpp and args.json is None and not args.markdown
    args = bench.build_parser().parse_args(
        ["-p", "8", "-n", "4", "-r", "1", "-t", "1", "--markdown"]
    )
    assert (args.n_prompt, args.n_gen, args.repetitions, args.threads, args.markdown) == (
        8,
        4,
        1,
        1,
        True,
    )
    with pytest.raises(SystemExit):
        bench.check_args(bench.build_parser().parse_args(["-n", "0"]))


def test_context_size_rounds_up():
    assert bench.context_size(256, 128) == 512
    assert bench.context_size(8, 4) == 256
    assert bench.context_size(240, 0) == 256


def test_bytes_per_token_matches_the_file(tiny_q4_1):
    """Recount from the GGUF tensor table: every tensor but the embedding, plus the embedding
    again as the tied head, plus one embedding row, plus K and V rows for the mean context."""
    reader = gguf.GGUFReader(str(tiny_q4_1.path))
    sizes = {t.name: int(t.n_bytes) for t in reader.tensors}
    shapes = {t.name: tuple(int(n) for n in reversed(t.shape)) for t in reader.tensors}
    table = {name: (shapes[name], sizes[name]) for name in sizes}
    c = tiny_q4_1.cfg
    config = {
        "n_layer": c["num_hidden_layers"],
        "n_head_kv": c["num_key_value_heads"],
        "head_dim": c["head_dim"],
        "tied_embeddings": True,
    }
    got = bench_util.bytes_per_token(table, config, ctx_mean=10.5, kv_elem_bytes=2)
    emb = sizes["token_embd.weight"]
    row = emb // c["vocab_size"]
    assert row == c["hidden_size"] // 32 * 20  # one Q4_1 row: 20 bytes per 32 values
    assert got["weights"] == sum(sizes.values()) + row
    kv_pos = 2 * c["num_hidden_layers"] * c["num_key_value_heads"] * c["head_dim"] * 2
    assert got["kv_per_position"] == kv_pos
    assert got["total"] == pytest.approx(sum(sizes.values()) + row + 10.5 * kv_pos)
    untied = bench_util.bytes_per_token(table, {**config, "tied_embeddings": False}, 0, 2)
    assert untied["weights"] == sum(sizes.values()) - emb + row


def test_run_bench_on_tiny_model(tiny_q4_1, tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = ["-m", str(tiny_q4_1.path), "-p", "8", "-n", "4", "-r", "1", "-t", "1"]
    argv += ["--bandwidth-mib", "8", "--busy-retries", "0", "--json", str(out), "--markdown"]
    assert bench.main(argv) == 0
    result = json.loads(out.read_text())
    top = {"args", "model", "n_ctx", "bytes_per_token", "bandwidth", "machine", "engines"}
    assert top <= set(result)
    assert set(result["engines"]) == {"metallic"} and result["greedy_agree_prefix"] is None
    runs = result["engines"]["metallic"]["runs"]
    timed = ("pp_tps", "tg_tps", "ttft_s", "stream_tps", "decode_gbs", "pp_s", "tg_s")
    for key in timed:
        assert len(runs[key]) == 1 and runs[key][0] > 0, key
    (share,) = runs["foreign_cpu"]  # None when the repetition was shorter than a clock tick
    assert share is None or 0.0 <= share <= 1.0
    assert len(runs["tg_tokens"]) == 4 and len(result["prompt_ids"]) == 8
    (probe,) = result["engines"]["metallic"]["probes"]
    assert probe["load_s"] > 0 and probe["peak_rss"] >= probe["rss_after_load"] > 0
    assert result["machine"]["cpu_model"] and result["bandwidth"]["best_gbs"] > 0
    assert set(result["summary"]["metallic"]) >= {"pp_tps", "tg_tps", "load_s", "peak_rss"}
    table = capsys.readouterr().out
    assert table.startswith("| model | test | metallic tok/s | llama.cpp tok/s | ratio |")
    assert "pp8 tok/s" in table and "tg4 tok/s" in table
    assert bench_report.detailed(result).count("±") >= 8


def test_batch_step_on_tiny_model(tiny_q4_1, tmp_path, capsys):
    import batch_step

    out = tmp_path / "s.json"
    argv = ["-m", str(tiny_q4_1.path), "-t", "1", "--streams", "1", "3", "--prompt", "4"]
    assert batch_step.main([*argv, "--steps", "3", "--repeats", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["streams"] for r in result["results"]] == [1, 3]
    assert all(len(r["step_s"]) == 2 and r["tok_s"] > 0 for r in result["results"])
    table = capsys.readouterr().out
    assert table.startswith("| streams | step ms (min) |") and "| 3 |" in table
    with pytest.raises(ValueError, match=r"\[batch_step\] --steps: expected"):  # InvalidArgument
        batch_step.main([*argv, "--steps", "0"])
