"""Parity: MLflow's own model server (``mlflow models serve`` of the pyfunc registered as
``champion``) and our service give the same top-k, scores, titles and fallback flags for the
same histories. Both read the same registry version; both run on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from lite_rec.registry.promotion import load_held_out
from lite_rec.registry.publish import log_training_run
from lite_rec.registry.versions import CHAMPION
from tests.helpers.service_process import ServiceProcess, mlflow_pyfunc_server, start_service
from tests.integration.test_registry import N_ITEMS, Run, run  # noqa: F401 - fixture

pytestmark = pytest.mark.e2e

MODEL = "lite-rec-e2e-parity"  # `run` registers under it, in its own experiment, on the run's shared MLflow server


@pytest.fixture(scope="module")
def servers(run: Run, mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ServiceProcess]]:
    """(pyfunc server URL, our service), both on models:/<MODEL>@champion."""
    root = tmp_path_factory.mktemp("parity")
    registered = log_training_run(run.cfg, run.result, run.bundle_dir, commit="parity")
    assert CHAMPION in registered.aliases
    with mlflow_pyfunc_server(f"models:/{MODEL}@{CHAMPION}", root, mlflow_server) as url:
        ours = start_service(["--model", f"models:/{MODEL}@{CHAMPION}", "--device", "cpu"], root,
                             env={"MLFLOW_TRACKING_URI": mlflow_server})
        try:
            yield url, ours
        finally:
            ours.stop()


def test_pyfunc_server_and_service_give_the_same_top_k(run: Run, servers: tuple[str, ServiceProcess]) -> None:
    pyfunc_url, ours = servers
    held = load_held_out(run.cfg)
    cases = [(h, 5, True) for h in held.histories[:12]]
    cases += [([], 5, True), ([f"i{i}" for i in range(1, 12)], 7, True), (held.histories[3], 10, False), (["i2"], 1, True)]
    records = [{"history": h, "k": k, "exclude_history": ex} for h, k, ex in cases]
    got = httpx.post(f"{pyfunc_url}/invocations", json={"dataframe_records": records}, timeout=60)
    assert got.status_code == 200, got.text
    predictions = got.json()["predictions"]
    assert len(predictions) == len(cases)
    versions = set()
    for (history, k, exclude), pred in zip(cases, predictions):
        mine = httpx.post(f"{ours.url}/recommend", json={"history": history, "k": k, "exclude_history": exclude}, timeout=30)
        assert mine.status_code == 200, mine.text
        body = mine.json()
        versions.add(body["model_version"])
        assert [i["item_id"] for i in body["items"]] == list(pred["item_ids"]), (history, k, exclude)
        assert [i["score"] for i in body["items"]] == pytest.approx(list(pred["scores"]), abs=1e-5)
        assert [i["title"] for i in body["items"]] == list(pred["titles"])
        assert body["fallback"] == pred["fallback"]
        assert len(body["items"]) == k
    assert versions == {"1"}
    assert [p["fallback"] for p in predictions].count(True) == 1  # the empty history only

    # The batch endpoint answers the same lists in one call.
    batch = httpx.post(f"{ours.url}/recommend/batch", json={"histories": [h for h, _, _ in cases[:12]], "k": 5}, timeout=30)
    assert batch.status_code == 200
    assert [[i["item_id"] for i in r["items"]] for r in batch.json()["results"]] == [list(p["item_ids"]) for p in predictions[:12]]
    assert N_ITEMS == ours.ready()["num_items"]


@pytest.mark.parametrize(
    "record",
    [{"history": ["i1", "\ud800"], "k": 3}, {"history": ["i1"], "k": 0}, {"history": ["i1"], "k": N_ITEMS + 1},
     {"history": "i1"}, {"history": [["i1"]]}],
    ids=["lone-surrogate", "k-zero", "k-over-catalog", "history-not-a-list", "id-not-a-string"],
)  # not a flag that is no boolean: MLflow's schema enforcement casts it to one before the pyfunc sees it
def test_pyfunc_server_and_service_refuse_the_same_bad_requests(servers: tuple[str, ServiceProcess], record: dict) -> None:
    pyfunc_url, ours = servers
    headers = {"content-type": "application/json"}
    theirs = httpx.post(f"{pyfunc_url}/invocations", content=json.dumps({"dataframe_records": [record]}), headers=headers, timeout=60)
    mine = httpx.post(f"{ours.url}/recommend", content=json.dumps(record), headers=headers, timeout=30)
    assert theirs.status_code == 400, theirs.text  # MLflow's scoring server answers every refusal with 400
    assert mine.status_code == 422 and mine.json()["error"] == "invalid_request", mine.text
