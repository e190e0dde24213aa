"""What the service counts, and the Prometheus text format (0.0.4) that ``GET /metrics`` returns.

Why written here instead of taken from ``prometheus_client``: the service needs three metric
kinds and one exposition format, a few dozen lines; a dependency would bring a process-global
default registry (two apps in one test process would share counters) and multiprocess modes we
do not use. The format: https://prometheus.io/docs/instrumenting/exposition_formats/ —
``# HELP``/``# TYPE`` lines, one sample per line, label values escaped (``\\``, ``"``, newline),
histogram buckets cumulative with a final ``le="+Inf"`` equal to ``_count``.

Label cardinality is bounded by the caller: endpoints are route templates (unknown paths count
as ``other``), statuses are HTTP codes, outcomes a fixed set.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Iterable, Sequence

__all__ = ["LATENCY_BUCKETS_S", "Counter", "Gauge", "Histogram", "MetricsRegistry", "ServiceMetrics", "escape_label"]

# Seconds; spans a CUDA-graph replay (sub-ms) to a CPU batch call (seconds).
LATENCY_BUCKETS_S: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

LabelValues = tuple[str, ...]


def escape_label(value: str) -> str:
    """Escape a label value for the text format: backslash, double quote and line feed."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(float(value))


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{escape_label(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Family:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = ()) -> None:
        self.name, self.help, self.label_names = name, help_text, tuple(label_names)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> LabelValues:
        if set(labels) != set(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {sorted(labels)}")
        return tuple(str(labels[n]) for n in self.label_names)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def samples(self) -> list[str]:
        raise NotImplementedError


class Counter(_Family):
    """A monotonically increasing count per label set."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, label_names)
        self._values: dict[LabelValues, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def samples(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{_labels(self.label_names, k)} {_number(v)}" for k, v in items]


class Gauge(_Family):
    """A value that is set (the served model version, readiness)."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, label_names)
        self._values: dict[LabelValues, float] = {}

    def set(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def replace(self, value: float, **labels: str) -> None:
        """Drop every other label set, then set this one (an "info" gauge of the current model)."""
        key = self._key(labels)
        with self._lock:
            self._values = {key: float(value)}

    def value(self, **labels: str) -> float | None:
        with self._lock:
            return self._values.get(self._key(labels))

    def samples(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{_labels(self.label_names, k)} {_number(v)}" for k, v in items]


class Histogram(_Family):
    """Observations counted into fixed upper bounds (exposed cumulatively), with sum and count."""

    kind = "histogram"

    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = (), buckets: Iterable[float] = LATENCY_BUCKETS_S) -> None:
        super().__init__(name, help_text, label_names)
        self.buckets = tuple(sorted(float(b) for b in buckets if not math.isinf(b)))
        self._counts: dict[LabelValues, list[int]] = {}  # per bucket (non-cumulative), + one for > last
        self._sums: dict[LabelValues, float] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        slot = bisect.bisect_left(self.buckets, value)  # first bound >= value ("le" is inclusive)
        with self._lock:
            counts = self._counts.setdefault(key, [0] * (len(self.buckets) + 1))
            counts[slot] += 1
            self._sums[key] = self._sums.get(key, 0.0) + value

    def count(self, **labels: str) -> int:
        with self._lock:
            return sum(self._counts.get(self._key(labels), []))

    def samples(self) -> list[str]:
        with self._lock:
            items = sorted((k, list(v), self._sums[k]) for k, v in self._counts.items())
        out: list[str] = []
        for key, counts, total in items:
            running = 0
            for bound, n in zip([*self.buckets, math.inf], counts, strict=True):
                running += n
                le = f'le="{_number(bound)}"'
                out.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {running}")
            out.append(f"{self.name}_sum{_labels(self.label_names, key)} {_number(total)}")
            out.append(f"{self.name}_count{_labels(self.label_names, key)} {running}")
        return out


class MetricsRegistry:
    """An ordered set of metric families rendered together (one per app, never process-global)."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}

    def add(self, family: _Family) -> _Family:
        if family.name in self._families:
            raise ValueError(f"metric {family.name} is already registered")
        self._families[family.name] = family
        return family

    def render(self) -> str:
        lines: list[str] = []
        for family in self._families.values():
            lines += family.header() + family.samples()
        return "\n".join(lines) + "\n"


class ServiceMetrics:
    """The metrics of one recommendation service (what ``/metrics`` exposes)."""

    CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

    def __init__(self, prefix: str = "lite_rec") -> None:
        r = self.registry = MetricsRegistry()
        p = prefix
        self.requests: Counter = r.add(Counter(f"{p}_requests_total", "HTTP requests by endpoint and status code.", ("endpoint", "status")))  # type: ignore[assignment]
        self.latency: Histogram = r.add(Histogram(f"{p}_request_seconds", "Request latency in seconds (body read to response sent).", ("endpoint",)))  # type: ignore[assignment]
        self.users: Counter = r.add(Counter(f"{p}_recommended_users_total", "Users answered, by whether the popularity fallback answered them.", ("fallback",)))  # type: ignore[assignment]
        self.batch_users: Histogram = r.add(Histogram(f"{p}_forward_users", "Users scored per forward pass (micro-batching coalesces concurrent requests).", (), buckets=(1, 2, 4, 8, 16, 32, 64, 256, 1024)))  # type: ignore[assignment]
        self.model_version: Gauge = r.add(Gauge(f"{p}_model_version", "Registry version of the model being served (0 for a local bundle)."))  # type: ignore[assignment]
        self.model_info: Gauge = r.add(Gauge(f"{p}_model_info", "The model being served (value 1; labels say which).", ("version", "source", "device")))  # type: ignore[assignment]
        self.ready: Gauge = r.add(Gauge(f"{p}_ready", "1 when a model is loaded and warmed up."))  # type: ignore[assignment]
        self.loads: Counter = r.add(Counter(f"{p}_model_loads_total", "Model versions loaded, by outcome (success or failure).", ("outcome",)))  # type: ignore[assignment]
        self.swaps: Counter = r.add(Counter(f"{p}_model_swaps_total", "Times a newly loaded version replaced the served one."))  # type: ignore[assignment]
        self.load_seconds: Gauge = r.add(Gauge(f"{p}_model_load_seconds", "Seconds the last successful load took (download, verify, warm-up)."))  # type: ignore[assignment]
        self.ready.set(0)
        self.model_version.set(0)

    def record_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.inc(endpoint=endpoint, status=str(status))
        self.latency.observe(seconds, endpoint=endpoint)

    def render(self) -> str:
        return self.registry.render()
