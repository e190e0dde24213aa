"""What the service counts, exposed by ``GET /metrics`` through ``prometheus_client``.

Each :class:`ServiceMetrics` owns its own :class:`~prometheus_client.CollectorRegistry`; nothing
is registered in the library's process-global default registry, so two apps in one process
(tests, a service embedded beside other code) never share or collide on counters.

Two choices differ from the library's defaults, both per registry, never process-wide:

- No ``_created`` series. ``prometheus_client`` adds a ``<name>_created`` timestamp beside every
  counter and histogram label set, which doubles the series of ``/metrics`` and carries nothing
  a restart counter does not. ``disable_created_metrics()`` would drop them for every registry in
  the process (other libraries' too), so :class:`_Registry` filters them out of its own output.
- The served model's ``lite_rec_model_info`` is one series whose labels are replaced whole when
  a new version is swapped in (:class:`InfoGauge`): a scrape never sees two models or none.

Label cardinality is bounded by the caller: endpoints are route templates (unknown paths count
as ``other``), statuses are HTTP codes, outcomes a fixed set.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

__all__ = ["LATENCY_BUCKETS_S", "InfoGauge", "ServiceMetrics"]

# Seconds; spans a CUDA-graph replay (sub-ms) to a CPU batch call (seconds).
LATENCY_BUCKETS_S: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _Registry(CollectorRegistry):
    """A registry whose output leaves out the ``<name>_created`` samples (module docstring)."""

    def collect(self) -> Iterable[Metric]:
        for family in super().collect():
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


class InfoGauge:
    """A gauge of value 1 whose one label set says what is current (the served model).

    :meth:`replace` swaps the labels by one reference assignment, so a concurrent scrape sees the
    old set or the new one, never both and never none (a ``Gauge`` would need ``clear()`` first).
    """

    def __init__(self, name: str, documentation: str, label_names: Sequence[str], registry: CollectorRegistry) -> None:
        self.name, self.documentation, self.label_names = name, documentation, tuple(label_names)
        self._values: tuple[str, ...] | None = None
        registry.register(self)

    def replace(self, **labels: str) -> None:
        if set(labels) != set(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {sorted(labels)}")
        self._values = tuple(str(labels[n]) for n in self.label_names)

    def labels(self) -> dict[str, str] | None:
        values = self._values
        return None if values is None else dict(zip(self.label_names, values, strict=True))

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(self.name, self.documentation, labels=self.label_names)]

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.label_names)
        values = self._values  # read once
        if values is not None:
            family.add_metric(list(values), 1.0)
        return [family]


class ServiceMetrics:
    """The metrics of one recommendation service (what ``/metrics`` exposes), in its own registry."""

    def __init__(self, prefix: str = "lite_rec") -> None:
        r = self.registry = _Registry(auto_describe=True)
        p = prefix
        self.requests = Counter(f"{p}_requests_total", "HTTP requests by endpoint and status code.", ("endpoint", "status"), registry=r)
        self.latency = Histogram(f"{p}_request_seconds", "Request latency in seconds (body read to response sent).", ("endpoint",),
                                 buckets=LATENCY_BUCKETS_S, registry=r)
        self.users = Counter(f"{p}_recommended_users_total", "Users answered, by whether the popularity fallback answered them.",
                             ("fallback",), registry=r)
        self.batch_users = Histogram(f"{p}_forward_users", "Users scored per forward pass (micro-batching coalesces concurrent requests).",
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 256, 1024), registry=r)
        self.model_version = Gauge(f"{p}_model_version", "Registry version of the model being served (0 for a local bundle).", registry=r)
        self.model_info = InfoGauge(f"{p}_model_info", "The model being served (value 1; labels say which).", ("version", "source", "device"), r)
        self.ready = Gauge(f"{p}_ready", "1 when a model is loaded and warmed up.", registry=r)
        self.loads = Counter(f"{p}_model_loads_total", "Model versions loaded, by outcome (success or failure).", ("outcome",), registry=r)
        self.swaps = Counter(f"{p}_model_swaps_total", "Times a newly loaded version replaced the served one.", registry=r)
        self.load_seconds = Gauge(f"{p}_model_load_seconds", "Seconds the last successful load took (download, verify, warm-up).", registry=r)
        self.poll_failures = Counter(f"{p}_registry_poll_failures_total",
                                     "Checks of the served reference that failed (registry unreachable or slow, alias missing).", registry=r)
        self.since_success = Gauge(f"{p}_registry_seconds_since_success",
                                   "Seconds since the last successful check of the followed alias (NaN when no alias is followed).",
                                   registry=r)
        self.since_success.set_function(lambda: math.nan)

    def record_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()
        self.latency.labels(endpoint=endpoint).observe(seconds)

    def follow_checks(self, seconds_since_success: Callable[[], float]) -> None:
        """Read the ``registry_seconds_since_success`` gauge from `seconds_since_success` at each scrape."""
        self.since_success.set_function(seconds_since_success)

    def value(self, name: str, **labels: str) -> float | None:
        """One sample's current value (``None`` when that series does not exist)."""
        return self.registry.get_sample_value(name, labels)

    def render(self) -> str:
        """The Prometheus text format (what a plain ``GET /metrics`` returns)."""
        return generate_latest(self.registry).decode("utf-8")

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """(body, content type) for a scrape that sent `accept` (OpenMetrics when it asks for it)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

