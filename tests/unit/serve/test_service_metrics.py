"""The service metrics through prometheus_client: exact lines, cumulative buckets, escaping, one
registry per app (nothing in the process-global one), no ``_created`` series, and an independent
parse with prometheus_client's own parser.

Against the hand-written format these tests once covered, the exposition legitimately differs in
three ways: values are written as floats (``1.0``), label sets appear in the order they were first
used (not sorted), and labels inside a sample are sorted by name."""

from __future__ import annotations

import math
import threading

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from lite_rec.serve.metrics import InfoGauge, ServiceMetrics


def _lines(m: ServiceMetrics, prefix: str) -> list[str]:
    return [line for line in m.render().splitlines() if line.startswith(prefix)]


def test_counter_lines_are_labelled_and_typed_once() -> None:
    m = ServiceMetrics()
    m.requests.labels(endpoint="/recommend", status="200").inc()
    m.requests.labels(endpoint="/recommend", status="200").inc(2)
    m.requests.labels(endpoint="/health", status="200").inc()
    assert _lines(m, "lite_rec_requests_total") == [
        'lite_rec_requests_total{endpoint="/recommend",status="200"} 3.0',
        'lite_rec_requests_total{endpoint="/health",status="200"} 1.0',
    ]
    assert m.value("lite_rec_requests_total", endpoint="/recommend", status="200") == 3
    text = m.render()
    assert "# HELP lite_rec_requests_total HTTP requests by endpoint and status code." in text
    assert text.count("# TYPE lite_rec_requests_total counter") == 1


def test_counter_refuses_to_go_down_and_wrong_labels() -> None:
    m = ServiceMetrics()
    with pytest.raises(ValueError, match="non-negative"):
        m.loads.labels(outcome="success").inc(-1)
    with pytest.raises(ValueError, match="label names"):
        m.loads.labels(colour="red")


def test_histogram_buckets_are_cumulative_and_le_is_inclusive() -> None:
    m = ServiceMetrics()
    for v in (0.0005, 0.001, 0.003, 0.5):  # 0.001 falls in le="0.001" (upper bounds are inclusive)
        m.latency.labels(endpoint="/r").observe(v)
    lines = _lines(m, "lite_rec_request_seconds")
    buckets = {line.split('le="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1]) for line in lines if "_bucket" in line}
    assert buckets["0.001"] == 2 and buckets["0.0025"] == 2 and buckets["0.005"] == 3 and buckets["0.25"] == 3
    assert buckets["0.5"] == 4 and buckets["+Inf"] == 4
    assert list(buckets.values()) == sorted(buckets.values())  # cumulative
    assert 'lite_rec_request_seconds_count{endpoint="/r"} 4.0' in lines
    assert 'lite_rec_request_seconds_sum{endpoint="/r"} 0.5045' in lines
    assert m.value("lite_rec_request_seconds_count", endpoint="/r") == 4


def test_label_values_are_escaped() -> None:
    m = ServiceMetrics()
    m.model_info.replace(version="1", source='/tmp/odd "dir"\\x\ny', device="cpu")
    assert _lines(m, "lite_rec_model_info{") == ['lite_rec_model_info{device="cpu",source="/tmp/odd \\"dir\\"\\\\x\\ny",version="1"} 1.0']


def test_model_info_keeps_only_the_current_label_set() -> None:
    m = ServiceMetrics()
    assert _lines(m, "lite_rec_model_info{") == []  # nothing served yet: no series
    m.model_info.replace(version="1", source="models:/m/1", device="cpu")
    m.model_info.replace(version="2", source="models:/m/2", device="cpu")
    assert _lines(m, "lite_rec_model_info{") == ['lite_rec_model_info{device="cpu",source="models:/m/2",version="2"} 1.0']
    assert m.value("lite_rec_model_info", version="1", source="models:/m/1", device="cpu") is None
    with pytest.raises(ValueError, match="takes labels"):
        m.model_info.replace(version="3")


def test_each_app_has_its_own_registry_and_the_global_one_stays_empty() -> None:
    a, b = ServiceMetrics(), ServiceMetrics()  # two apps in one process: no "Duplicated timeseries" error
    a.record_request("/recommend", 200, 0.01)
    assert a.value("lite_rec_requests_total", endpoint="/recommend", status="200") == 1
    assert b.value("lite_rec_requests_total", endpoint="/recommend", status="200") is None
    assert REGISTRY.get_sample_value("lite_rec_requests_total", {"endpoint": "/recommend", "status": "200"}) is None
    with pytest.raises(ValueError, match="Duplicated"):
        InfoGauge("lite_rec_model_info", "again", ("version",), a.registry)


def test_no_created_series_are_exposed() -> None:
    m = ServiceMetrics()
    m.record_request("/recommend", 200, 0.01)
    m.swaps.inc()
    assert "_created" not in m.render()
    body, _ = m.exposition("application/openmetrics-text; version=1.0.0")
    assert b"_created" not in body


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
    assert m.value("lite_rec_requests_total", endpoint="/recommend", status="200") == 16000
    assert m.value("lite_rec_request_seconds_count", endpoint="/recommend") == 16000


def test_content_type_is_negotiated_by_prometheus_client() -> None:
    m = ServiceMetrics()
    assert m.exposition(None)[1] == "text/plain; version=0.0.4; charset=utf-8"
    body, content_type = m.exposition("application/openmetrics-text; version=1.0.0; charset=utf-8")
    assert content_type.startswith("application/openmetrics-text; version=1.0.0") and body.endswith(b"# EOF\n")


def test_registry_check_age_is_read_at_each_scrape() -> None:
    m = ServiceMetrics()
    assert math.isnan(m.value("lite_rec_registry_seconds_since_success"))  # nothing followed: NaN
    age = [3.0]
    m.follow_checks(lambda: age[0])
    assert m.value("lite_rec_registry_seconds_since_success") == 3.0
    age[0] = 7.5
    assert "lite_rec_registry_seconds_since_success 7.5" in m.render()
    m.poll_failures.inc()
    assert m.value("lite_rec_registry_poll_failures_total") == 1


def test_service_metrics_render_parses_with_the_reference_parser() -> None:
    m = ServiceMetrics()
    m.record_request("/recommend", 200, 0.003)
    m.record_request("/recommend", 422, 0.0008)
    m.record_request("other", 404, 0.0001)
    m.users.labels(fallback="true").inc()
    m.model_version.set(3)
    m.model_info.replace(version="3", source="models:/lite-rec-ml1m/3", device="cpu")
    m.loads.labels(outcome="failure").inc()
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
