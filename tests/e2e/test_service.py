"""The real service (uvicorn subprocess on 127.0.0.1): every endpoint, every bad input, and
following the registry's ``champion`` through a real ``mlflow server``, also across an outage.

Bad input must give a 4xx that names the problem in one bounded JSON shape, never a 500 and
never a dead worker; the last test of the first part checks the process is still alive and
/metrics recorded no 500.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from prometheus_client.parser import text_string_to_metric_families

import mlflow
from lite_rec.core.config import ModelConfig
from lite_rec.infer.bundle import save_bundle
from lite_rec.infer.recommender import Recommender
from lite_rec.model.rec_llm import build_model
from lite_rec.pipeline import stack
from lite_rec.registry.client import mlflow_uris
from lite_rec.registry.publish import PYFUNC_FILE, log_training_run
from lite_rec.registry.tracking import experiment_name
from lite_rec.registry.versions import CHAMPION, set_champion
from lite_rec.serve.app import ERROR_BODY_MAX_BYTES
from tests.helpers.service_process import ServiceProcess, start_service
from tests.integration.test_registry import VALID_TARGET, Run, _variant, run  # noqa: F401 - fixture

pytestmark = pytest.mark.e2e

ITEMS = 30
WINDOW = 5
TARGET = f"i{VALID_TARGET}"  # a version-2 bundle (_variant) ranks it first for every user's own history
IDS = [f"movie-{i}" for i in range(1, ITEMS + 1)]
BODY_LIMIT = 4096
MODEL = "lite-rec-e2e-service"  # `run` registers under it, in its own experiment, on the run's shared MLflow server


def _bundle(path: Path) -> Path:
    torch.manual_seed(3)
    cfg = ModelConfig(backbone="lean", pretrained=False, d_model=16, n_layers=1, n_heads=2, d_ff=32, dropout=0.0, max_seq_len=WINDOW)
    vectors = torch.randn(ITEMS + 1, 8)
    vectors[0] = 0
    model, _ = build_model(cfg, ITEMS, vectors, causal=False)
    with torch.no_grad():
        model.head.weight.mul_(20.0)  # spread the logits: rankings without near-ties
    counts = np.arange(ITEMS, 0, -1) * 3  # item 1 most popular
    return save_bundle(
        path, spec=model.spec.to_dict(), model_config=cfg, state_dict=model.state_dict(), dataset="tiny",
        items=pd.DataFrame({"item_idx": range(1, ITEMS + 1), "item_id": IDS, "title": [f"Title of {i}" for i in IDS]}),
        popularity=pd.DataFrame({"item_idx": range(1, ITEMS + 1), "count": counts}),
    )


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServiceProcess, Recommender]]:
    root = tmp_path_factory.mktemp("service")
    bundle = _bundle(root / "bundle")
    svc = start_service(["--model", str(bundle), "--device", "cpu", "--set", f"serve.max_body_bytes={BODY_LIMIT}"], root)
    try:
        yield svc, Recommender.from_path(bundle)
    finally:
        svc.stop()


def _post(svc: ServiceProcess, path: str, body: object, **kwargs: object) -> httpx.Response:
    return httpx.post(svc.url + path, json=body, timeout=30, **kwargs)  # type: ignore[arg-type]


def _assert_same(got: dict, want) -> None:  # want: Recommendation
    assert [i["item_id"] for i in got["items"]] == want.item_ids
    assert [i["score"] for i in got["items"]] == pytest.approx(want.scores, abs=1e-4)
    assert [i["title"] for i in got["items"]] == want.titles
    assert got["fallback"] == want.fallback


# ---------------------------------------------------------------------------------------------
# Endpoints


def test_health_ready_and_metrics_endpoints(local) -> None:
    svc, rec = local
    assert httpx.get(svc.url + "/health").json() == {"status": "ok"}
    ready = httpx.get(svc.url + "/ready")
    assert ready.status_code == 200
    body = ready.json()
    assert body["ready"] is True and body["model_version"] == "local" and body["device"] == "cpu"
    assert body["num_items"] == ITEMS and body["fingerprint"] == rec.bundle.fingerprint
    metrics = httpx.get(svc.url + "/metrics")
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "lite_rec_ready 1" in metrics.text
    families = {f.name: f for f in text_string_to_metric_families(metrics.text)}  # labels in any order
    assert [s.labels["version"] for s in families["lite_rec_model_info"].samples] == ["local"]
    assert 'lite_rec_model_loads_total{outcome="success"} 1' in metrics.text
    assert "_created" not in metrics.text


def test_recommend_gives_the_in_process_top_k_with_titles(local) -> None:
    svc, rec = local
    for history, k, exclude in [(IDS[:3], 5, True), (IDS[10:14], 10, False), ([IDS[7]], 1, True)]:
        got = _post(svc, "/recommend", {"history": history, "k": k, "exclude_history": exclude})
        assert got.status_code == 200, got.text
        body = got.json()
        _assert_same(body, rec.recommend([history], k, exclude)[0])
        assert body["model_version"] == "local" and body["k"] == k and len(body["items"]) == k
        if exclude:
            assert not set(history) & {i["item_id"] for i in body["items"]}


def test_batch_equals_one_call_per_user(local) -> None:
    svc, rec = local
    histories = [IDS[:2], [], IDS[5:12], [IDS[29], IDS[0]]]
    got = _post(svc, "/recommend/batch", {"histories": histories, "k": 4})
    assert got.status_code == 200, got.text
    results = got.json()["results"]
    assert len(results) == len(histories)
    for res, history in zip(results, histories):
        single = _post(svc, "/recommend", {"history": history, "k": 4}).json()
        assert [i["item_id"] for i in res["items"]] == [i["item_id"] for i in single["items"]]
        _assert_same(res, rec.recommend([history], 4)[0])
    assert [r["fallback"] for r in results] == [False, True, False, False]


# ---------------------------------------------------------------------------------------------
# Bad input: a clear 4xx each


def test_unknown_item_ids_are_named_in_a_422_or_dropped_on_request(local) -> None:
    svc, rec = local
    bad = _post(svc, "/recommend", {"history": [IDS[0], "no-such-movie", "also-missing"], "k": 3})
    assert bad.status_code == 422
    assert bad.json()["error"] == "unknown_items" and bad.json()["unknown_item_ids"] == ["no-such-movie", "also-missing"]
    assert "no-such-movie" in bad.json()["detail"]
    ok = _post(svc, "/recommend", {"history": [IDS[0], "no-such-movie"], "k": 3, "ignore_unknown": True})
    assert ok.status_code == 200
    assert ok.json()["unknown_item_ids"] == ["no-such-movie"] and ok.json()["history_items_used"] == 1
    _assert_same(ok.json(), rec.recommend([[IDS[0]]], 3)[0])
    batch = _post(svc, "/recommend/batch", {"histories": [[IDS[0]], ["ghost"]], "k": 3})
    assert batch.status_code == 422 and batch.json()["unknown_item_ids"] == ["ghost"]


def test_empty_history_gets_the_flagged_popularity_fallback(local) -> None:
    svc, _ = local
    body = _post(svc, "/recommend", {"history": [], "k": 4}).json()
    assert body["fallback"] is True and body["history_items_used"] == 0
    assert [i["item_id"] for i in body["items"]] == IDS[:4]  # counts fall with item_idx
    only_unknown = _post(svc, "/recommend", {"history": ["ghost"], "k": 2, "ignore_unknown": True}).json()
    assert only_unknown["fallback"] is True and [i["item_id"] for i in only_unknown["items"]] == IDS[:2]


def test_history_longer_than_the_window_keeps_the_most_recent_items(local) -> None:
    svc, rec = local
    long = IDS[:WINDOW + 7]
    body = _post(svc, "/recommend", {"history": long, "k": 6, "exclude_history": False}).json()
    assert body["history_items_used"] == WINDOW
    recent = _post(svc, "/recommend", {"history": long[-WINDOW:], "k": 6, "exclude_history": False}).json()
    assert [i["item_id"] for i in body["items"]] == [i["item_id"] for i in recent["items"]]
    # with masking, the *whole* history is excluded, not only the window
    masked = _post(svc, "/recommend", {"history": long, "k": 6}).json()
    assert not set(long) & {i["item_id"] for i in masked["items"]}
    _assert_same(masked, rec.recommend([long], 6)[0])


@pytest.mark.parametrize("k", [0, -1, ITEMS + 1, 10**12])
def test_k_out_of_range_is_a_422(local, k: int) -> None:
    svc, _ = local
    got = _post(svc, "/recommend", {"history": IDS[:2], "k": k})
    assert got.status_code == 422 and got.json()["error"] == "invalid_request"
    assert f"got {k}" in got.json()["detail"] and str(ITEMS) in got.json()["detail"]


@pytest.mark.parametrize(
    "body",
    [{"history": IDS[:2], "k": "5"}, {"history": IDS[:2], "k": 2.5}, {"history": IDS[0]}, {"history": [None]},
     {"k": 3}, {"history": [], "colour": "red"}, [IDS[:2]], {"history": [], "exclude_history": "maybe"}],
)
def test_schema_violations_are_a_422_naming_the_field(local, body: object) -> None:
    svc, _ = local
    got = _post(svc, "/recommend", body)
    assert got.status_code == 422, got.text
    assert got.json()["error"] == "invalid_request" and got.json()["errors"]


@pytest.mark.parametrize("raw", [b'{"history": ["movie-1",', b"not json at all", b'{"history": [}', b"\xff\xfe"])
def test_malformed_json_is_a_400(local, raw: bytes) -> None:
    svc, _ = local
    got = httpx.post(svc.url + "/recommend", content=raw, headers={"content-type": "application/json"})
    assert got.status_code == 400, got.text
    assert got.json()["error"] == "malformed_json"


@pytest.mark.parametrize(
    "path, raw, content_type, status, error",
    [("/recommend", b'{"history": ["movie-1", "\\ud800"], "k": 3}', "application/json", 422, "invalid_request"),
     ("/recommend/batch", b'{"histories": [["movie-1"], ["\\udfff"]], "k": 3}', "application/json", 422, "invalid_request"),
     ("/recommend", b'{"history": ["movie-1\xff"]}', "application/json", 400, "malformed_json"),
     ("/recommend/batch", b'{"histories": ' + b"[" * 1500 + b"]" * 1500 + b"}", "application/json", 400, "malformed_json"),
     ("/recommend", b'{"history": ["movie-1"], "k": 3}', "text/plain", 415, "unsupported_media_type"),
     ("/recommend", b'{"history": ["movie-1"], "k": 3}', None, 415, "unsupported_media_type"),
     ("/recommend", b'{"history": ["' + b"z" * 3000 + b'"], "k": 3}', "application/json", 422, "unknown_items")],
    ids=["surrogate", "surrogate-batch", "invalid-utf8", "nested", "text-plain", "no-content-type", "long-unknown-id"],
)
def test_every_bad_body_gets_our_bounded_error_shape(local, path: str, raw: bytes, content_type: str | None, status: int, error: str) -> None:
    svc, _ = local
    got = httpx.post(svc.url + path, content=raw, headers={"content-type": content_type} if content_type else {})
    assert got.status_code == status, got.text
    body = got.json()
    assert body["error"] == error and isinstance(body["detail"], str)
    assert len(got.content) <= ERROR_BODY_MAX_BYTES
    if error == "unknown_items":
        assert body["unknown_item_count"] == 1 and len(body["unknown_item_ids"][0]) < 100 and len(got.content) < 1024


def test_oversized_payloads_get_413_by_header_and_by_actual_bytes(local) -> None:
    svc, _ = local
    big = json.dumps({"history": IDS * 40, "k": 3}).encode()
    assert len(big) > BODY_LIMIT
    declared = httpx.post(svc.url + "/recommend", content=big, headers={"content-type": "application/json"})
    assert declared.status_code == 413 and declared.json()["error"] == "payload_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer, only the bytes tell
        for i in range(0, len(big), 512):
            yield big[i : i + 512]

    chunked = httpx.post(svc.url + "/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert chunked.status_code == 413
    batch = httpx.post(svc.url + "/recommend/batch", content=json.dumps({"histories": [IDS] * 40}).encode(),
                       headers={"content-type": "application/json"})
    assert batch.status_code == 413
    small = _post(svc, "/recommend", {"history": IDS[:2], "k": 3})  # the limit is not a blanket refusal
    assert small.status_code == 200


def test_after_all_bad_input_the_worker_lives_and_no_500_was_served(local) -> None:
    svc, _ = local
    assert httpx.get(svc.url + "/nowhere").status_code == 404
    assert svc.alive()
    assert httpx.get(svc.url + "/health").status_code == 200
    text = httpx.get(svc.url + "/metrics").text
    assert 'status="500"' not in text, text
    assert not re.search(r'endpoint="/recommend[^"]*",status="5\d\d"', text), text  # (/ready was 503 while loading)
    for status in ("200", "400", "404", "413", "415", "422"):
        assert f'status="{status}"' in text
    assert 'lite_rec_requests_total{endpoint="other",status="404"} 1' in text
    assert re.search(r'lite_rec_recommended_users_total\{fallback="true"\} [1-9]', text)


# ---------------------------------------------------------------------------------------------
# Following the registry (a real mlflow server)


def _user_history(run: Run) -> list[str]:
    """The first user's own history (its item ids): the variant ranks TARGET first for it."""
    seqs = pd.read_parquet(run.cfg.processed_dir / "sequences.parquet")
    return [f"i{i}" for i in seqs["train_seq"].iloc[0]]


def _register_broken(run: Run, server: str, tmp: Path) -> str:
    """A version whose bundle does not match its manifest: the registry accepts it, loading must not."""
    broken = tmp / "bundle-broken"
    shutil.copytree(run.bundle_dir, broken)
    with open(broken / "items.parquet", "ab") as fh:
        fh.write(b"tampered")
    client = MlflowClient(server, registry_uri=server)  # never the process-wide registry URI another module set
    exp = client.get_experiment_by_name(experiment_name(run.cfg))
    with mlflow_uris(client), mlflow.start_run(experiment_id=exp.experiment_id) as r:
        info = mlflow.pyfunc.log_model(name="model", python_model=str(PYFUNC_FILE), artifacts={"bundle": str(broken)},
                                       pip_requirements=["mlflow"])
    mv = client.create_model_version(MODEL, info.model_uri, run_id=r.info.run_id, model_id=info.model_id)
    return str(mv.version)


def test_service_follows_champion_and_survives_a_broken_version(run: Run, mlflow_server: str, tmp_path: Path) -> None:
    client = MlflowClient(mlflow_server, registry_uri=mlflow_server)  # never the process-wide registry URI another module set
    v1 = log_training_run(run.cfg, run.result, run.bundle_dir, commit="e2e")
    env = {"MLFLOW_TRACKING_URI": mlflow_server}
    missing = start_service(["--model", "models:/lite-rec-nothing@champion", "--device", "cpu", "--poll-interval", "0.5"],
                            tmp_path / "missing", env=env, wait_ready=False)
    svc = None
    try:
        status = missing.wait_for(lambda s: s.get("last_error"), 30, "the missing alias to be reported")
        assert httpx.get(missing.url + "/ready").status_code == 503 and status["ready"] is False
        assert "no alias 'champion'" in status["last_error"]["error"]
        not_ready = _post(missing, "/recommend", {"history": [], "k": 2})
        assert not_ready.status_code == 503 and not_ready.json()["error"] == "not_ready"
        missing.stop()

        svc = start_service(["--model", f"models:/{MODEL}@{CHAMPION}", "--device", "cpu", "--poll-interval", "0.5"],
                            tmp_path / "follow", env=env)
        assert svc.ready()["model_version"] == v1.version == "1"
        history = _user_history(run)
        before = _post(svc, "/recommend", {"history": history, "k": 3}).json()
        assert before["model_version"] == "1" and before["items"][0]["item_id"] != TARGET

        v2 = log_training_run(run.cfg, run.result, _variant(run, "bundle-e2e-better", 1.0), commit="e2e")
        assert svc.ready()["model_version"] == "1"  # registering alone never moves champion
        set_champion(client, MODEL, v2.version)
        svc.wait_for(lambda s: s.get("model_version") == v2.version, 60, "the swap to version 2")
        after = _post(svc, "/recommend", {"history": history, "k": 3}).json()
        assert after["model_version"] == "2" and after["items"][0]["item_id"] == TARGET
        text = httpx.get(svc.url + "/metrics").text
        assert "lite_rec_model_version 2" in text and "lite_rec_model_swaps_total 1" in text

        v3 = _register_broken(run, mlflow_server, tmp_path)
        set_champion(client, MODEL, v3)
        status = svc.wait_for(lambda s: (s.get("last_error") or {}).get("version") == v3, 60, "the broken version to be reported")
        assert status["model_version"] == "2" and status["ready"] is True
        assert "CacheMismatch" in status["last_error"]["error"] and v3 in status["failed_versions"]
        still = _post(svc, "/recommend", {"history": history, "k": 3})
        assert still.status_code == 200 and still.json()["model_version"] == "2"
        text = httpx.get(svc.url + "/metrics").text
        assert 'lite_rec_model_loads_total{outcome="failure"} 1' in text and "lite_rec_model_version 2" in text

        set_champion(client, MODEL, v1.version)  # a rollback is just another move
        status = svc.wait_for(lambda s: s.get("model_version") == "1", 60, "the rollback to version 1")
        assert status["last_error"] is None
        assert _post(svc, "/recommend", {"history": history, "k": 3}).json()["items"] == before["items"]
        assert svc.alive()
    finally:
        missing.stop()
        if svc is not None:
            svc.stop()


def _sample(text: str, name: str) -> float:
    return float(re.search(rf"^{name} (\S+)$", text, re.M)[1])  # type: ignore[index]


def test_a_registry_outage_shows_within_a_few_polls_and_a_move_lands_once_it_is_back(run: Run, tmp_path: Path) -> None:
    """Kill the tracking server under a service that follows champion, check that /ready and
    /metrics show it within a few poll intervals while the old model keeps serving, then bring
    the server back on the same port and store, move champion, and check the new version serves."""
    interval = 2.0
    store = tmp_path / "registry"
    tracking: stack.Service | None = stack.start_mlflow(store)
    port = int(str(tracking.url).rsplit(":", 1)[1])
    url = str(tracking.url)
    svc = None
    try:
        cfg = run.cfg.model_copy(update={"tracking": run.cfg.tracking.model_copy(update={"tracking_uri": url})})
        v1 = log_training_run(cfg, run.result, run.bundle_dir, commit="outage")
        v2 = log_training_run(cfg, run.result, _variant(run, "bundle-outage-better", 1.0), commit="outage")
        assert (v1.version, v2.version) == ("1", "2") and CHAMPION in v1.aliases and CHAMPION not in v2.aliases
        svc = start_service(["--model", f"models:/{MODEL}@{CHAMPION}", "--device", "cpu", "--poll-interval", str(interval)],
                            tmp_path / "svc", env={"MLFLOW_TRACKING_URI": url})
        assert svc.ready()["model_version"] == "1"
        history = _user_history(run)

        stopping = time.time()
        stack.stop(tracking)  # by PID, its whole process group
        tracking = None
        down = time.time()
        status = svc.wait_for(lambda s: s.get("last_error"), 3 * interval + 3, "the outage in /ready")
        assert time.time() - down < 3 * interval + 3
        assert status["ready"] is True and status["model_version"] == "1" and status["last_error"]["version"] is None
        assert status["last_check"] >= stopping - interval and status["last_success"] <= down  # a check of the outage
        time.sleep(2 * interval)
        status = svc.ready()
        assert time.time() - status["last_check"] < 2 * interval + 1  # checked every interval, none hangs
        text = httpx.get(svc.url + "/metrics").text
        assert _sample(text, "lite_rec_registry_poll_failures_total") >= 2
        assert _sample(text, "lite_rec_registry_seconds_since_success") >= 2 * interval
        served = _post(svc, "/recommend", {"history": history, "k": 3})
        assert served.status_code == 200 and served.json()["model_version"] == "1"  # the old model keeps serving

        tracking = stack.start_mlflow(store, port)  # back: same port, same store
        set_champion(MlflowClient(url, registry_uri=url), MODEL, v2.version)
        moved = time.monotonic()
        status = svc.wait_for(lambda s: s.get("model_version") == "2", 3 * interval + 60, "the move to version 2 after the outage")
        assert time.monotonic() - moved < 3 * interval + 60
        assert status["last_error"] is None and time.time() - status["last_success"] < 2 * interval + 1
        after = _post(svc, "/recommend", {"history": history, "k": 3}).json()
        assert after["model_version"] == "2" and after["items"][0]["item_id"] == TARGET
        assert _sample(httpx.get(svc.url + "/metrics").text, "lite_rec_registry_seconds_since_success") < 2 * interval + 1
        assert svc.alive()
    finally:
        if svc is not None:
            svc.stop()
        if tracking is not None:
            stack.stop(tracking)
