"""A small thread-safe Prometheus registry (text exposition format 0.0.4), no dependencies.

:class:`Counter`, :class:`Gauge` and :class:`Histogram` (fixed buckets) render ``# HELP`` and
``# TYPE`` lines and their samples; :class:`ServerMetrics` holds the server's metrics, named
``metallic:...`` as vLLM and llama.cpp name theirs (``vllm:...``, ``llamacpp:...``). Serve
:meth:`ServerMetrics.render` at ``GET /metrics`` with ``CONTENT_TYPE``.

Every update takes the metric's own lock; updates that span several metrics
(:meth:`ServerMetrics.set_queue`, :meth:`ServerMetrics.set_kv`) and :meth:`Registry.render` also
take the registry's lock, so a scrape never sees half of such an update.
"""

from __future__ import annotations

import bisect
import math
import re
import threading
from collections.abc import Sequence
from typing import TypeVar

from ..errors import InvalidArgument

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
M = TypeVar("M", bound="_Metric")


def _check(ok: bool, where: str, expected: str, got: object) -> None:
    if not ok:
        raise InvalidArgument(f"[metrics] {where}: expected {expected}, got {got!r}")


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def format_value(value: float) -> str:
    """A sample value as Prometheus writes it (``+Inf``, ``-Inf``, ``NaN``, else Python repr)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(pairs: Sequence[tuple[str, str]]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape_label(v)}"' for k, v in pairs) + "}"


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        _check(isinstance(name, str) and bool(_NAME.fullmatch(name)), "name", "[a-zA-Z_:]…", name)
        _check(isinstance(help, str), f"{name} help", "a string", help)
        for label in labelnames:
            _check(
                isinstance(label, str) and bool(_LABEL.fullmatch(label)) and label != "le",
                f"{name} label",
                "a name [a-zA-Z_][a-zA-Z0-9_]* other than 'le'",
                label,
            )
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()
        self._values: dict[tuple[str, ...], float] = {} if self.labelnames else {(): 0.0}

    def _key(self, labels: dict[str, str]) -> tuple[str, ...]:
        _check(
            set(labels) == set(self.labelnames)
            and all(isinstance(v, str) for v in labels.values()),
            f"{self.name} labels",
            f"string values for exactly {list(self.labelnames)}",
            labels,
        )
        return tuple(labels[k] for k in self.labelnames)

    def declare(self, **labels: str) -> None:
        """Creates the series with value 0 so that it is rendered before its first update."""
        key = self._key(labels)
        with self._lock:
            self._values.setdefault(key, 0.0)

    def value(self, **labels: str) -> float:
        key = self._key(labels)
        with self._lock:
            return self._values.get(key, 0.0)

    def _header(self) -> list[str]:
        return [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        lines = self._header()
        for key, value in items:
            pairs = tuple(zip(self.labelnames, key, strict=True))
            lines.append(f"{self.name}{_labels(pairs)} {format_value(value)}")
        return lines


class Counter(_Metric):
    """A monotonically increasing total (name it ``..._total``)."""

    kind = "counter"

    def inc(self, amount: float = 1.0, /, **labels: str) -> None:
        _check(_finite(amount) and amount >= 0, f"{self.name} inc", "a finite number >= 0", amount)
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount


class Gauge(_Metric):
    """A value that goes up and down."""

    kind = "gauge"

    def set(self, value: float, /, **labels: str) -> None:
        _check(_finite(value), f"{self.name} set", "a finite number", value)
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def inc(self, amount: float = 1.0, /, **labels: str) -> None:
        _check(_finite(amount), f"{self.name} inc", "a finite number", amount)
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def dec(self, amount: float = 1.0, /, **labels: str) -> None:
        self.inc(-amount, **labels)


class Histogram(_Metric):
    """Observations counted into fixed buckets (upper bounds, ``+Inf`` added), no labels."""

    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: Sequence[float]) -> None:
        super().__init__(name, help)
        bounds = [float(b) for b in buckets if _finite(b)]
        _check(
            len(bounds) == len(buckets) and bounds == sorted(set(bounds)) and len(bounds) > 0,
            f"{name} buckets",
            "finite numbers in strictly increasing order",
            buckets,
        )
        self.buckets = tuple(bounds)
        self._counts = [0] * (len(bounds) + 1)  # per bucket, not cumulative; last is +Inf
        self._sum = 0.0
        self._count = 0

    def observe(self, value: float) -> None:
        _check(_finite(value), f"{self.name} observe", "a finite number", value)
        index = bisect.bisect_left(self.buckets, value)  # first bound >= value: le is inclusive
        with self._lock:
            self._counts[index] += 1
            self._sum += value
            self._count += 1

    def snapshot(self) -> tuple[list[int], float, int]:
        """(cumulative counts per bucket including +Inf, sum, count)."""
        with self._lock:
            counts, total, count = list(self._counts), self._sum, self._count
        cumulative, running = [], 0
        for c in counts:
            running += c
            cumulative.append(running)
        return cumulative, total, count

    def render(self) -> list[str]:
        cumulative, total, count = self.snapshot()
        lines = self._header()
        bounds = [format_value(b) for b in self.buckets] + ["+Inf"]
        for bound, c in zip(bounds, cumulative, strict=True):
            lines.append(f'{self.name}_bucket{{le="{bound}"}} {format_value(c)}')
        lines.append(f"{self.name}_sum {format_value(total)}")
        lines.append(f"{self.name}_count {format_value(count)}")
        return lines


class Registry:
    """Metrics in registration order; ``render()`` is the text a scrape gets."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._metrics: list[_Metric] = []

    def register(self, metric: M) -> M:
        with self.lock:
            _check(
                all(m.name != metric.name for m in self._metrics),
                "register",
                "a name not registered yet",
                metric.name,
            )
            self._metrics.append(metric)
        return metric

    def render(self) -> str:
        with self.lock:
            lines = [line for m in self._metrics for line in m.render()]
        return "\n".join(lines) + "\n"


REQUEST_STATUSES = ("stop", "length", "cancelled", "error")
# Seconds. TTFT spans a long prompt's prefill; inter-token latency is a decode step.
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05,
    0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


def _count(where: str, value: object) -> int:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        raise InvalidArgument(f"[metrics] {where}: expected an int >= 0, got {value!r}")
    return value


def _seconds(where: str, value: object) -> float:
    if not (_finite(value) and value >= 0):  # type: ignore[operator]
        raise InvalidArgument(f"[metrics] {where}: expected seconds (finite, >= 0), got {value!r}")
    return float(value)  # type: ignore[arg-type]


class ServerMetrics:
    """The server's metrics and the events that move them.

    Called by the app and the scheduler: ``on_request_start`` when a request is accepted (it
    counts as waiting until the scheduler's next ``set_queue``, which sets both queue gauges to
    its exact counts), ``on_first_token`` with the seconds from arrival to the first token,
    ``on_token`` with the seconds since the previous token (for tokens 2..n), ``on_request_end``
    once per request with its token counts and status ("stop" / "length": the finish reason;
    "cancelled": the client left or the server stopped it; "error"), ``set_kv`` with the KV
    cache cells in use and allocated. Token totals move at the end of each request.
    """

    def __init__(self) -> None:
        reg = self.registry = Registry()
        self.requests_running = reg.register(
            Gauge("metallic:requests_running", "Requests being computed (prefill or decode).")
        )
        self.requests_waiting = reg.register(
            Gauge("metallic:requests_waiting", "Requests accepted and waiting for a slot.")
        )
        self.prompt_tokens = reg.register(
            Counter("metallic:prompt_tokens_total", "Prompt tokens of finished requests.")
        )
        self.generation_tokens = reg.register(
            Counter("metallic:generation_tokens_total", "Tokens generated by finished requests.")
        )
        self.requests = reg.register(
            Counter(
                "metallic:requests_total",
                "Finished requests by status (stop, length, cancelled, error).",
                ("status",),
            )
        )
        for status in REQUEST_STATUSES:
            self.requests.declare(status=status)
        self.time_to_first_token = reg.register(
            Histogram(
                "metallic:time_to_first_token_seconds",
                "Seconds from a request's arrival to its first generated token.",
                TTFT_BUCKETS,
            )
        )
        self.inter_token_latency = reg.register(
            Histogram(
                "metallic:inter_token_latency_seconds",
                "Seconds between consecutive generated tokens of a request.",
                ITL_BUCKETS,
            )
        )
        self.kv_cells_used = reg.register(
            Gauge("metallic:kv_cells_used", "KV cache cells (token positions) in use.")
        )
        self.kv_cells_total = reg.register(
            Gauge("metallic:kv_cells_total", "KV cache cells (token positions) allocated.")
        )

    def on_request_start(self) -> None:
        self.requests_waiting.inc()

    def on_first_token(self, seconds: float) -> None:
        self.time_to_first_token.observe(_seconds("on_first_token", seconds))

    def on_token(self, seconds_since_prev: float) -> None:
        self.inter_token_latency.observe(_seconds("on_token", seconds_since_prev))

    def on_request_end(self, prompt_tokens: int, completion_tokens: int, status: str) -> None:
        expected = f"one of {', '.join(REQUEST_STATUSES)}"
        _check(status in REQUEST_STATUSES, "on_request_end status", expected, status)
        prompt = _count("on_request_end prompt_tokens", prompt_tokens)
        completion = _count("on_request_end completion_tokens", completion_tokens)
        self.prompt_tokens.inc(prompt)
        self.generation_tokens.inc(completion)
        self.requests.inc(status=status)

    def set_queue(self, running: int, waiting: int) -> None:
        running = _count("set_queue running", running)
        waiting = _count("set_queue waiting", waiting)
        with self.registry.lock:
            self.requests_running.set(running)
            self.requests_waiting.set(waiting)

    def set_kv(self, used: int, total: int) -> None:
        used = _count("set_kv used", used)
        total = _count("set_kv total", total)
        _check(used <= total, "set_kv used", f"at most total ({total})", used)
        with self.registry.lock:
            self.kv_cells_used.set(used)
            self.kv_cells_total.set(total)

    def render(self) -> str:
        return self.registry.render()
