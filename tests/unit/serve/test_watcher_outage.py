"""A registry outage shows within one poll interval, in ``/ready`` and ``/metrics``, and an alias
moved meanwhile is picked up once the registry answers again. Here the registry is a stand-in
client that answers, refuses or hangs; tests/e2e/test_service.py does the same against a real
``mlflow server`` that is killed and restarted."""

from __future__ import annotations

import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from mlflow.exceptions import MlflowException

from lite_rec.infer.bundle import Bundle, load_bundle
from lite_rec.infer.recommender import Recommender
from lite_rec.registry.refs import parse_model_ref
from lite_rec.serve.app import create_app
from lite_rec.serve.watcher import ModelWatcher
from tests.helpers.tiny_models import save_tiny_bundle, tiny_model

IDS = [f"w{i}" for i in range(1, 13)]


class StandInRegistry:
    """``get_model_version_by_alias`` as MLflow's client answers it: up, down (refused) or hanging."""

    def __init__(self) -> None:
        self.version, self.mode = "1", "up"
        self.release = threading.Event()  # lets a hanging call end when the test is over
        self.seen_env: list[tuple[str | None, str | None]] = []

    def get_model_version_by_alias(self, name: str, alias: str) -> Any:
        self.seen_env.append((os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES"), os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT")))
        if self.mode == "hang":
            self.release.wait(60)
        if self.mode in ("down", "hang"):
            raise MlflowException("API request to http://127.0.0.1:5000/api/2.0/mlflow/registered-models/alias failed: Connection refused")
        return SimpleNamespace(version=self.version)


class StandInWatcher(ModelWatcher):
    """Downloads nothing: every version is the local test bundle."""

    def __init__(self, bundle: Path, registry: StandInRegistry, poll_interval_s: float) -> None:
        super().__init__(parse_model_ref("models:/tiny@champion"), Recommender, poll_interval_s=poll_interval_s)
        self._client, self._bundle = registry, bundle

    def _fetch(self, version: str) -> tuple[Bundle, str]:
        return load_bundle(self._bundle), f"models:/tiny/{version}"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_bundle(tmp_path_factory.mktemp("outage") / "bundle", tiny_model(n_items=len(IDS), window=4, n_layers=1), IDS)


@pytest.fixture
def registry() -> Iterator[StandInRegistry]:
    reg = StandInRegistry()
    yield reg
    reg.release.set()
    for thread in threading.enumerate():  # an abandoned lookup ends now; the next test starts clean
        if thread.name == "lite-rec-registry-lookup":
            thread.join(10)


def _sample(text: str, name: str) -> float:
    return float(re.search(rf"^{name} (\S+)$", text, re.M)[1])  # type: ignore[index]


def _wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_a_hanging_registry_fails_the_check_within_the_interval(bundle: Path, registry: StandInRegistry) -> None:
    watcher = StandInWatcher(bundle, registry, poll_interval_s=1.0)
    assert watcher.check() and watcher.current.version == "1"  # type: ignore[union-attr]
    registry.mode = "hang"
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="did not answer the lookup of models:/tiny@champion within 1.0 s"):
        watcher.check()
    assert time.monotonic() - started < 1.5
    assert watcher.metrics.value("lite_rec_registry_poll_failures_total") == 1
    assert time.time() - watcher.last_check < 2 and watcher.last_success < watcher.last_check  # type: ignore[operator]


def test_the_lookup_runs_with_mlflow_retries_off_and_its_timeout_bounded(bundle: Path, registry: StandInRegistry,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    StandInWatcher(bundle, registry, poll_interval_s=5.0).check()
    StandInWatcher(bundle, registry, poll_interval_s=600.0).check()
    assert registry.seen_env == [("0", "3"), ("0", "15")]  # half the lookup's deadline (interval, at most 30 s)
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "7" and "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ  # put back


def test_an_outage_shows_in_ready_and_metrics_and_an_alias_move_is_picked_up_after(bundle: Path, registry: StandInRegistry) -> None:
    interval = 0.5
    watcher = StandInWatcher(bundle, registry, poll_interval_s=interval)
    client = TestClient(create_app(watcher), raise_server_exceptions=False)
    with client:  # the lifespan starts and stops the watcher thread
        _wait(lambda: client.get("/ready").json().get("model_version") == "1", 30, "version 1")
        registry.mode = "down"
        cut = time.time()
        status = _wait(lambda: (s := client.get("/ready").json())["last_error"] and s, 4 * interval + 2, "the outage in /ready")
        assert status["ready"] is True and status["model_version"] == "1"  # the old model keeps serving
        assert status["last_error"]["version"] is None and "Connection refused" in status["last_error"]["error"]
        assert status["last_check"] >= cut and status["last_success"] < cut
        assert client.post("/recommend", json={"history": IDS[:2], "k": 2}).status_code == 200
        time.sleep(2 * interval)
        status = client.get("/ready").json()
        assert time.time() - status["last_check"] < 2 * interval + 1  # still checking, every interval
        metrics = client.get("/metrics").text
        failures, age = _sample(metrics, "lite_rec_registry_poll_failures_total"), _sample(metrics, "lite_rec_registry_seconds_since_success")
        assert failures >= 2 and age >= 2 * interval

        registry.version, registry.mode = "2", "up"  # back, with the alias moved meanwhile
        status = _wait(lambda: (s := client.get("/ready").json())["model_version"] == "2" and s, 4 * interval + 5, "version 2")
        assert status["last_error"] is None and time.time() - status["last_success"] < 2 * interval + 1
        metrics = client.get("/metrics").text
        assert _sample(metrics, "lite_rec_registry_seconds_since_success") < 2 * interval + 1
        assert "lite_rec_model_version 2.0" in metrics


def test_a_local_bundle_reports_no_registry_age(bundle: Path) -> None:
    watcher = ModelWatcher(parse_model_ref(str(bundle)), Recommender)
    assert watcher.check()
    assert math.isnan(watcher.metrics.value("lite_rec_registry_seconds_since_success"))  # type: ignore[arg-type]
    assert watcher.status()["last_success"] is not None
