"""benchmarks/serve_vs_api.py: its summary of paired rounds, its argument checks, and one short run
end to end on a tiny model (a real server subprocess). No timing is asserted."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import serve_vs_api as sva  # noqa: E402

tiny_models = pytest.importorskip("tiny_models")


def _round(api, server, k=0):
    return {"prompt": k, "server_first": k % 2 == 1, "api_tps": api, "server_tps": server}


def test_summary_is_the_median_of_per_round_ratios():
    api = [200.0, 150.0, 210.0, 190.0, 205.0]
    server = [180.0, 140.0, 170.0, 185.0, 160.0]
    rounds = [_round(a, s, k) for k, (a, s) in enumerate(zip(api, server, strict=True))]
    rounds.append(_round(None, 100.0, 5))  # one token in process: no rate, left out
    rounds.append(_round(100.0, None, 6))
    s = sva.summarize_rounds(rounds)
    ratios = np.array(server) / np.array(api)
    assert s["rounds"] == 5
    assert s["ratio_p50"] == pytest.approx(np.median(ratios))
    assert s["ratio_p25"] == pytest.approx(np.percentile(ratios, 25))
    assert s["ratio_p75"] == pytest.approx(np.percentile(ratios, 75))
    assert (s["api_tps_p50"], s["server_tps_p50"]) == (200.0, 170.0)
    # The median of the ratios, not the ratio of the medians (170 / 200 = 0.85).
    assert s["ratio_p50"] == pytest.approx(180.0 / 200.0)


def test_summary_without_a_usable_round_raises():
    with pytest.raises(sva.ServeBenchError, match=r"\[serve_vs_api\] rounds: expected one"):
        sva.summarize_rounds([_round(None, 120.0), _round(130.0, None)])


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--rounds", "0"], "--rounds"),
        (["--threads", "0"], "--threads"),
        (["--max-tokens", "1"], "--max-tokens"),
    ],
)
def test_main_rejects(argv, flag, capsys):
    with pytest.raises(SystemExit) as e:
        sva.main(argv)
    assert e.value.code == 2
    assert f"[serve_vs_api] {flag}: expected" in capsys.readouterr().err


def test_short_run_on_a_tiny_model(tmp_path):
    """Two rounds (one server-first): the same greedy tokens on both sides, a ratio per round."""
    path = tiny_models.make_model(tmp_path, "llama", "q8_0", "gguf").path
    args = sva.build_parser().parse_args(
        ["-m", str(path), "--rounds", "2", "--max-tokens", "6", "-t", "1"]
    )
    result = sva.run(args, log=lambda msg: None)
    rounds = result["rounds"]
    assert [r["server_first"] for r in rounds] == [False, True]
    for r in rounds:
        assert r["api_tokens"] == r["server_tokens"] >= 2
    assert result["summary"]["rounds"] == 2 and result["summary"]["ratio_p50"] > 0
    text = sva.report(result)
    assert "2 alternating rounds" in text and "goal >= 0.90" in text
