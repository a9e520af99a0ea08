"""Prometheus metrics of the server (``metallic.server.metrics``).

The exposition is read back by a parser written here from the text format spec (version 0.0.4:
https://prometheus.io/docs/instrumenting/exposition_formats/), which also checks the spec's
rules: one HELP and TYPE per family before its samples, families contiguous, label values
escaped, histogram buckets cumulative with ``+Inf`` equal to ``_count``. Then the event methods,
the validation of their arguments, and exact totals under concurrent updates.
"""

from __future__ import annotations

import math
import re
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metallic import errors
from metallic.server.metrics import (
    CONTENT_TYPE,
    ITL_BUCKETS,
    TTFT_BUCKETS,
    Counter,
    Gauge,
    Histogram,
    Registry,
    ServerMetrics,
    format_value,
)

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ----------------------------------------------------------------------------- the parser

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"^({_NAME})(\{{.*\}})? ([^ ]+)( -?[0-9]+)?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')


def _unescape(text: str, quotes: bool) -> str:
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            nxt = text[i + 1]
            allowed = {"\\": "\\", "n": "\n", '"': '"'} if quotes else {"\\": "\\", "n": "\n"}
            assert nxt in allowed, f"bad escape \\{nxt} in {text!r}"
            out.append(allowed[nxt])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _labels(block: str | None) -> dict[str, str]:
    if not block:
        return {}
    inner, labels, pos = block[1:-1], {}, 0
    while pos < len(inner):
        m = _LABEL.match(inner, pos)
        assert m, f"bad label syntax at {inner[pos:]!r}"
        assert m.group(1) not in labels, f"label {m.group(1)} repeated"
        labels[m.group(1)] = _unescape(m.group(2), quotes=True)
        pos = m.end()
    return labels


def _value(text: str) -> float:
    special = {"+Inf": math.inf, "-Inf": -math.inf, "NaN": math.nan}
    if text in special:
        return special[text]
    assert re.fullmatch(r"[-+]?([0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?|[0-9]+\.)", text), text
    return float(text)


def parse(text: str) -> dict[str, dict]:
    """{family: {"type", "help", "samples": [(name, labels, value)]}} of an exposition."""
    assert text.endswith("\n"), "the exposition ends with a line feed"
    families: dict[str, dict] = {}
    current = None
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            kind, name, rest = line[2:6], *line[7:].split(" ", 1)
            assert re.fullmatch(_NAME, name), name
            family = families.setdefault(name, {"samples": []})
            assert kind.lower() not in family, f"second {kind} for {name}"
            assert not family["samples"], f"{kind} of {name} after its samples"
            if kind == "TYPE":
                assert rest in ("counter", "gauge", "histogram", "summary", "untyped"), rest
            family[kind.lower()] = _unescape(rest, quotes=False) if kind == "HELP" else rest
            current = name
            continue
        assert not line.startswith("#") and line.strip(), f"unexpected line {line!r}"
        m = _SAMPLE.match(line)
        assert m, f"bad sample line {line!r}"
        name, labels, value = m.group(1), _labels(m.group(2)), _value(m.group(3))
        assert current is not None and "type" in families[current], f"{name} before its TYPE"
        family = families[current]
        suffixes = ("_bucket", "_sum", "_count") if family["type"] == "histogram" else ("",)
        assert name in {current + s for s in suffixes}, f"{name} outside its family {current}"
        family["samples"].append((name, labels, value))
    for name, family in families.items():
        assert "type" in family and "help" in family, f"{name} lacks HELP or TYPE"
        if family["type"] == "histogram":
            _check_histogram(name, family["samples"])
    return families


def _check_histogram(name: str, samples: list) -> None:
    buckets = [(s[1]["le"], s[2]) for s in samples if s[0] == name + "_bucket"]
    assert buckets and buckets[-1][0] == "+Inf", f"{name}: no +Inf bucket"
    bounds = [_value(le) for le, _ in buckets]
    counts = [c for _, c in buckets]
    assert bounds == sorted(bounds) and len(set(bounds)) == len(bounds)
    assert counts == sorted(counts), f"{name}: buckets not cumulative"
    (count,) = [s[2] for s in samples if s[0] == name + "_count"]
    assert counts[-1] == count
    assert len([s for s in samples if s[0] == name + "_sum"]) == 1


def sample(families: dict, name: str, **labels: str) -> float:
    for family in families.values():
        for sname, slabels, value in family["samples"]:
            if sname == name and slabels == labels:
                return value
    raise KeyError(f"{name}{labels}")


# ----------------------------------------------------------------------------- tests


EXPECTED = {
    "metallic:requests_running": "gauge",
    "metallic:requests_waiting": "gauge",
    "metallic:prompt_tokens_total": "counter",
    "metallic:generation_tokens_total": "counter",
    "metallic:requests_total": "counter",
    "metallic:time_to_first_token_seconds": "histogram",
    "metallic:inter_token_latency_seconds": "histogram",
    "metallic:kv_cells_used": "gauge",
    "metallic:kv_cells_total": "gauge",
}


def test_fresh_exposition_has_every_metric_at_zero():
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"
    families = parse(ServerMetrics().render())
    assert {n: f["type"] for n, f in families.items()} == EXPECTED
    for status in ("stop", "length", "cancelled", "error"):
        assert sample(families, "metallic:requests_total", status=status) == 0
    ttft = families["metallic:time_to_first_token_seconds"]["samples"]
    assert len(ttft) == len(TTFT_BUCKETS) + 3 and all(s[2] == 0 for s in ttft)


def test_events_move_the_metrics():
    m = ServerMetrics()
    for _ in range(3):
        m.on_request_start()
    m.set_queue(running=2, waiting=1)
    m.on_first_token(0.2)
    m.on_first_token(0.04)  # exactly on a bound: le is inclusive
    for dt in (0.01, 0.02, 0.5, 100.0):
        m.on_token(dt)
    m.on_request_end(10, 5, "stop")
    m.on_request_end(7, 0, "cancelled")
    m.on_request_end(3, 16, "length")
    m.set_kv(used=300, total=4096)
    f = parse(m.render())
    assert sample(f, "metallic:requests_running") == 2
    assert sample(f, "metallic:requests_waiting") == 1
    assert sample(f, "metallic:prompt_tokens_total") == 20
    assert sample(f, "metallic:generation_tokens_total") == 21
    for status, n in (("stop", 1), ("length", 1), ("cancelled", 1), ("error", 0)):
        assert sample(f, "metallic:requests_total", status=status) == n
    ttft = "metallic:time_to_first_token_seconds"
    assert sample(f, ttft + "_bucket", le="0.02") == 0
    assert sample(f, ttft + "_bucket", le="0.04") == 1
    assert sample(f, ttft + "_bucket", le="0.25") == 2
    assert sample(f, ttft + "_count") == 2 and sample(f, ttft + "_sum") == pytest.approx(0.24)
    itl = "metallic:inter_token_latency_seconds"
    assert sample(f, itl + "_bucket", le="0.01") == 1
    assert sample(f, itl + "_bucket", le=format_value(ITL_BUCKETS[-1])) == 3
    assert sample(f, itl + "_bucket", le="+Inf") == 4
    assert sample(f, "metallic:kv_cells_used") == 300
    assert sample(f, "metallic:kv_cells_total") == 4096


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda m: m.on_first_token(-0.1), "on_first_token"),
        (lambda m: m.on_first_token(math.nan), "on_first_token"),
        (lambda m: m.on_token(math.inf), "on_token"),
        (lambda m: m.on_token(True), "on_token"),
        (lambda m: m.on_request_end(1, 1, "ok"), "on_request_end status"),
        (lambda m: m.on_request_end(-1, 1, "stop"), "on_request_end prompt_tokens"),
        (lambda m: m.on_request_end(1, 1.5, "stop"), "on_request_end completion_tokens"),
        (lambda m: m.set_queue(-1, 0), "set_queue running"),
        (lambda m: m.set_queue(0, None), "set_queue waiting"),
        (lambda m: m.set_kv(5, 4), "set_kv used"),
    ],
)
def test_event_arguments_are_checked(call, fragment):
    m = ServerMetrics()
    with pytest.raises(errors.InvalidArgument, match=rf"^\[metrics\] {fragment}: expected"):
        call(m)
    families = parse(m.render())  # nothing moved
    assert sample(families, "metallic:prompt_tokens_total") == 0


def test_metric_definitions_are_checked():
    with pytest.raises(errors.InvalidArgument, match=r"^\[metrics\] name"):
        Counter("bad name", "h")
    with pytest.raises(errors.InvalidArgument, match=r"label"):
        Counter("ok", "h", ("le",))
    with pytest.raises(errors.InvalidArgument, match=r"buckets"):
        Histogram("h", "h", (1.0, 0.5))
    with pytest.raises(errors.InvalidArgument, match=r"buckets"):
        Histogram("h", "h", (1.0, math.inf))
    counter = Counter("c_total", "h", ("status",))
    with pytest.raises(errors.InvalidArgument, match=r"labels"):
        counter.inc(1, other="x")
    with pytest.raises(errors.InvalidArgument, match=r"inc"):
        counter.inc(-1, status="x")
    registry = Registry()
    registry.register(Gauge("g", "h"))
    with pytest.raises(errors.InvalidArgument, match=r"register"):
        registry.register(Counter("g", "other"))


@FAST
@given(st.text(max_size=20), st.text(max_size=40))
def test_label_values_and_help_are_escaped(value, help_text):
    registry = Registry()
    counter = registry.register(Counter("metallic:odd_total", help_text, ("status",)))
    counter.inc(2.5, status=value)
    families = parse(registry.render())
    assert families["metallic:odd_total"]["help"] == help_text
    assert sample(families, "metallic:odd_total", status=value) == 2.5


def test_format_value():
    assert [format_value(v) for v in (1, 0.5, math.inf, -math.inf, math.nan, 1e-7)] == [
        "1.0",
        "0.5",
        "+Inf",
        "-Inf",
        "NaN",
        "1e-07",
    ]


def test_concurrent_updates_are_exact():
    m = ServerMetrics()
    threads, per_thread = 8, 2000
    scrapes: list[str] = []
    start = threading.Barrier(threads + 1)

    def worker(i: int) -> None:
        start.wait()
        for k in range(per_thread):
            m.on_token(0.001 * (k % 50))
            m.on_request_end(3, 2, ("stop", "length")[k % 2])
            m.set_queue(i, k)

    def scraper() -> None:
        start.wait()
        for _ in range(20):
            scrapes.append(m.render())

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    pool.append(threading.Thread(target=scraper))
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    for text in scrapes:  # every scrape taken mid-update is still consistent
        parse(text)
    f = parse(m.render())
    total = threads * per_thread
    assert sample(f, "metallic:inter_token_latency_seconds_count") == total
    assert sample(f, "metallic:prompt_tokens_total") == 3 * total
    assert sample(f, "metallic:generation_tokens_total") == 2 * total
    assert sample(f, "metallic:requests_total", status="stop") == total / 2
    assert sample(f, "metallic:requests_total", status="length") == total / 2
    expected_sum = threads * sum(0.001 * (k % 50) for k in range(per_thread))
    assert sample(f, "metallic:inter_token_latency_seconds_sum") == pytest.approx(expected_sum)
