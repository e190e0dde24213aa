"""Prometheus text exposition of the service metrics: exact lines, cumulative buckets, escaping,
and an independent parse with prometheus_client's own parser (installed with Prefect)."""

from __future__ import annotations

import threading

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lite_rec.serve.metrics import Counter, Gauge, Histogram, MetricsRegistry, ServiceMetrics, escape_label


def test_counter_lines_are_sorted_and_labelled() -> None:
    c = Counter("reqs_total", "Requests.", ("endpoint", "status"))
    c.inc(endpoint="/recommend", status="200")
    c.inc(2, endpoint="/recommend", status="200")
    c.inc(endpoint="/health", status="200")
    assert c.samples() == ['reqs_total{endpoint="/health",status="200"} 1', 'reqs_total{endpoint="/recommend",status="200"} 3']
    assert c.value(endpoint="/recommend", status="200") == 3
    assert c.header() == ["# HELP reqs_total Requests.", "# TYPE reqs_total counter"]


def test_counter_refuses_to_go_down_and_wrong_labels() -> None:
    c = Counter("x_total", "X.", ("a",))
    with pytest.raises(ValueError, match="only goes up"):
        c.inc(-1, a="1")
    with pytest.raises(ValueError, match="takes labels"):
        c.inc(b="1")


def test_histogram_buckets_are_cumulative_and_le_is_inclusive() -> None:
    h = Histogram("lat_seconds", "Latency.", ("endpoint",), buckets=(0.001, 0.01, 0.1))
    for v in (0.0005, 0.001, 0.003, 0.5):  # 0.001 falls in le="0.001" (upper bounds are inclusive)
        h.observe(v, endpoint="/r")
    assert h.samples() == [
        'lat_seconds_bucket{endpoint="/r",le="0.001"} 2',
        'lat_seconds_bucket{endpoint="/r",le="0.01"} 3',
        'lat_seconds_bucket{endpoint="/r",le="0.1"} 3',
        'lat_seconds_bucket{endpoint="/r",le="+Inf"} 4',
        'lat_seconds_sum{endpoint="/r"} 0.5045',
        'lat_seconds_count{endpoint="/r"} 4',
    ]
    assert h.count(endpoint="/r") == 4


def test_label_values_are_escaped() -> None:
    assert escape_label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    g = Gauge("info", "Info.", ("source",))
    g.set(1, source='/tmp/odd "dir"\\x')
    assert g.samples() == ['info{source="/tmp/odd \\"dir\\"\\\\x"} 1']


def test_gauge_replace_keeps_only_the_current_label_set() -> None:
    g = Gauge("model_info", "Model.", ("version",))
    g.replace(1, version="1")
    g.replace(1, version="2")
    assert g.samples() == ['model_info{version="2"} 1']
    assert g.value(version="1") is None


def test_registry_refuses_duplicate_names() -> None:
    r = MetricsRegistry()
    r.add(Counter("a_total", "A."))
    with pytest.raises(ValueError, match="already registered"):
        r.add(Gauge("a_total", "A again."))


def test_concurrent_increments_are_not_lost() -> None:
    m = ServiceMetrics()

    def hammer() -> None:
        for _ in range(2000):
            m.record_request("/recommend", 200, 0.004)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert m.requests.value(endpoint="/recommend", status="200") == 16000
    assert m.latency.count(endpoint="/recommend") == 16000


def test_service_metrics_render_parses_with_the_reference_parser() -> None:
    m = ServiceMetrics()
    m.record_request("/recommend", 200, 0.003)
    m.record_request("/recommend", 422, 0.0008)
    m.record_request("other", 404, 0.0001)
    m.users.inc(fallback="true")
    m.model_version.set(3)
    m.model_info.replace(1, version="3", source="models:/lite-rec-ml1m/3", device="cpu")
    m.loads.inc(outcome="failure")
    m.ready.set(1)
    text = m.render()
    assert text.endswith("\n")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    # the reference parser strips _total from counter family names
    requests = {(s.labels["endpoint"], s.labels["status"]): s.value for s in families["lite_rec_requests"].samples if s.name.endswith("_total")}
    assert requests == {("/recommend", "200"): 1.0, ("/recommend", "422"): 1.0, ("other", "404"): 1.0}
    hist = families["lite_rec_request_seconds"]
    assert hist.type == "histogram"
    counts = {s.labels["endpoint"]: s.value for s in hist.samples if s.name.endswith("_count")}
    assert counts == {"/recommend": 2.0, "other": 1.0}
    inf = [s.value for s in hist.samples if s.name.endswith("_bucket") and s.labels["le"] == "+Inf" and s.labels["endpoint"] == "/recommend"]
    assert inf == [2.0]
    assert [s.value for s in families["lite_rec_model_version"].samples] == [3.0]
    assert [s.labels for s in families["lite_rec_model_info"].samples] == [{"version": "3", "source": "models:/lite-rec-ml1m/3", "device": "cpu"}]
    assert [(s.labels, s.value) for s in families["lite_rec_model_loads"].samples if s.name.endswith("_total")] == [({"outcome": "failure"}, 1.0)]
    assert [s.value for s in families["lite_rec_ready"].samples] == [1.0]
    assert text.count("# TYPE lite_rec_requests_total counter") == 1
