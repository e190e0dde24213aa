"""Offline equals online for a model that reads the input context, on real ml-100k.

A small model with time gaps, ratings, the time bias and the query time (one-hour floor) is
trained on real ml-100k. Then every test user's training and validation items go through the
in-process Recommender as events ``{"item_id", "ts", "rating"}`` with ``request_time`` = the test
item's timestamp, and the Recall/NDCG of the answers must be the offline evaluator's (the run's
own test metrics) to 1e-6, masked and unmasked; ``benchmarks/serving_path_eval.py`` (the GPU
measurement's script) gives the same numbers on this CPU. Then the model is registered in a real
``mlflow server``, and for a sample of those users the service (a uvicorn process on 127.0.0.1
following ``champion``), the pyfunc (through ``mlflow models serve``) and the batch scorer (an
interaction log with times and ratings, ``as_of`` = the test time) give the same top-k.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from benchmarks.serving_path_eval import serving_metrics, split_requests
from lite_rec.core.config import LiteRecConfig, build_config
from lite_rec.data.sequences import read_sequences
from lite_rec.infer.bundle import load_bundle
from lite_rec.infer.recommender import Recommender
from lite_rec.registry.versions import CHAMPION, registered_model_name
from lite_rec.train.export import build_bundle
from lite_rec.train.run import TrainResult, train_model
from tests.helpers.service_process import REPO, mlflow_pyfunc_server, start_service

pytestmark = pytest.mark.integration

CONTEXT = ["model.time_gaps=true", "model.ratings=true", "model.time_bias=true", "model.query_time=true",
           "model.query_gap_floor=3600"]
METRICS = [f"test_{m}_{k}_{n}" for m in ("masked", "unmasked") for k in ("recall", "ndcg") for n in (10, 20)]
K = 10
MODEL = "lite-rec-context-serving"  # its own model and experiment on the run's shared MLflow server


@dataclass(frozen=True)
class Trained:
    cfg: LiteRecConfig
    result: TrainResult
    bundle_dir: Path


@pytest.fixture(scope="module")
def trained(ml100k_config: LiteRecConfig, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    root = tmp_path_factory.mktemp("context-serving")
    cfg = build_config("ml-100k", [
        f"data_dir={ml100k_config.data_dir}", "model.backbone=lean", "model.pretrained=false", "model.item_repr=id",
        "model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.d_ff=64", "model.dropout=0.2",
        "model.max_seq_len=20", "model.pooling=last", "model.history_logit=true", *CONTEXT, "train.strategy=onepass",
        "train.batch_size=128", "train.lr=2e-3", "train.max_epochs=2", "train.device=cpu",
    ])
    sequences = read_sequences(cfg.processed_dir / "sequences.parquet")
    result = train_model(cfg, sequences, None, root / "run", progress=False)
    return Trained(cfg, result, build_bundle(cfg, result.out_dir, root / "bundle"))


def test_events_at_the_test_time_give_the_offline_evaluators_metrics(trained: Trained) -> None:
    rec = Recommender.from_path(trained.bundle_dir)
    assert rec.context_fields == ["ts", "rating", "request_time"]
    histories, times, targets, _ = split_requests(trained.cfg.processed_dir)
    assert len(targets) == trained.result.metrics["test_users"] == 943
    assert isinstance(histories[0][0], dict) and set(histories[0][0]) == {"item_id", "ts", "rating"}
    served = serving_metrics(rec, histories, times, targets, batch_size=trained.cfg.eval.batch_size)
    offline = {k: trained.result.metrics[k] for k in METRICS}
    assert {k: served[k] for k in METRICS} == pytest.approx(offline, abs=1e-6)
    assert offline["test_masked_ndcg_10"] > 0.02  # a model that learned something, so agreeing means something
    # the request time is read: the same events asked for a year later score otherwise
    later = serving_metrics(rec, histories, [t + 365 * 86_400 for t in times], targets, batch_size=trained.cfg.eval.batch_size)
    assert later["test_masked_ndcg_10"] != pytest.approx(offline["test_masked_ndcg_10"], abs=1e-6)


@pytest.mark.parametrize("path", ["eager", "fast"])
def test_the_gpu_measurement_script_gives_the_same_numbers_on_a_cpu(trained: Trained, tmp_path: Path, path: str) -> None:
    out = tmp_path / "eval.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "serving_path_eval.py"), "--run", str(trained.result.out_dir),
           "--processed-dir", str(trained.cfg.processed_dir), "--device", "cpu", "--out", str(out),
           *(["--eager"] if path == "eager" else [])]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    [run] = report["runs"]
    assert run["path"] == path and run["context_fields"] == ["ts", "rating", "request_time"]
    assert run["offline"] == {k: trained.result.metrics[k] for k in (*METRICS, "test_users")}
    # the eager path is the evaluator's computation; the fast path (the lean plan's fused kernels) may
    # reorder a near-tie on this CPU, not more
    tolerance = 1e-6 if path == "eager" else 3 / 943
    for key in METRICS:
        assert abs(run["serving"][key] - trained.result.metrics[key]) <= tolerance, (key, run["serving"][key])
    assert report["mean"] == {k: v for k, v in run["serving"].items() if k != "test_users"}
    assert "masked    R@10" in done.stderr


# ---------------------------------------------------------------------------------------------
# Service, pyfunc and batch scorer on the registered model


def _sample(trained: Trained) -> tuple[list[str], list[list[dict]], list[int]]:
    """Eight test users, the gaps from their last event to the test time on both sides of the floor."""
    histories, times, _, users = split_requests(trained.cfg.processed_dir)
    gaps = np.array([t - h[-1]["ts"] for h, t in zip(histories, times)])
    under = np.flatnonzero(gaps < 3600)[:4].tolist()
    over = np.flatnonzero(gaps >= 3600)[:4].tolist()
    assert len(under) == len(over) == 4
    picked = under + over
    return [users[u] for u in picked], [histories[u] for u in picked], [times[u] for u in picked]


@pytest.fixture(scope="module")
def served(trained: Trained, mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(pyfunc server URL, our service URL), both on models:/<model>@champion of a real mlflow server."""
    from lite_rec.registry.publish import log_training_run

    root = tmp_path_factory.mktemp("context-served")
    tracking = {"tracking_uri": mlflow_server, "registered_model": MODEL, "experiment": MODEL}
    cfg = trained.cfg.model_copy(update={"tracking": trained.cfg.tracking.model_copy(update=tracking)})
    registered = log_training_run(cfg, trained.result, trained.bundle_dir, commit="context-serving")
    assert CHAMPION in registered.aliases
    from mlflow.tracking import MlflowClient

    version = MlflowClient(mlflow_server, registry_uri=mlflow_server).get_model_version(registered.name, registered.version)
    assert json.loads(version.tags["context_fields"]) == ["ts", "rating", "request_time"]  # the model's MLflow page
    assert "ts, rating, request_time" in version.description
    model = f"models:/{registered_model_name(cfg)}@{CHAMPION}"
    with mlflow_pyfunc_server(model, root, mlflow_server) as url:
        ours = start_service(["--model", model, "--device", "cpu"], root, env={"MLFLOW_TRACKING_URI": mlflow_server})
        try:
            yield url, ours.url
        finally:
            ours.stop()


def test_service_pyfunc_and_batch_scorer_give_the_in_process_top_k(trained: Trained, served: tuple[str, str],
                                                                    tmp_path: Path) -> None:
    from lite_rec.serve.scoring import score_users

    pyfunc_url, service_url = served
    users, histories, times = _sample(trained)
    want = [r.item_ids for r in Recommender.from_path(trained.bundle_dir).recommend(histories, K, request_times=times)]
    assert len({tuple(w) for w in want}) > 1

    ready = httpx.get(f"{service_url}/ready", timeout=10).json()
    assert ready["context_fields"] == ["ts", "rating", "request_time"] and ready["model_version"] == "1"
    iso = [pd.Timestamp(t, unit="s", tz="UTC").isoformat() for t in times]  # half the requests in ISO-8601
    service = []
    for i, (history, when) in enumerate(zip(histories, times)):
        body = {"history": history, "request_time": iso[i] if i % 2 else when, "k": K}
        got = httpx.post(f"{service_url}/recommend", json=body, timeout=60)
        assert got.status_code == 200, got.text
        service.append([item["item_id"] for item in got.json()["items"]])
    assert service == want

    records = [{"history": h, "request_time": t, "k": K} for h, t in zip(histories, times)]
    got = httpx.post(f"{pyfunc_url}/invocations", json={"dataframe_records": records}, timeout=120)
    assert got.status_code == 200, got.text
    assert [list(p["item_ids"]) for p in got.json()["predictions"]] == want

    bundle = load_bundle(trained.bundle_dir)
    scored = []
    for user, history, when in zip(users, histories, times):  # one request time per run: as_of = this user's test time
        log = pd.DataFrame({"user_id": user, "item_id": [e["item_id"] for e in history], "ts": [e["ts"] for e in history],
                            "rating": [e["rating"] for e in history]})
        out = tmp_path / f"{user}.parquet"
        score_users(bundle, log, out, k=K, device="cpu", progress=False, as_of=when)
        scored.append(pd.read_parquet(out).sort_values("rank")["item_id"].tolist())
    assert scored == want

    # a request without the times this model reads is refused by both servers, naming the field
    plain = [e["item_id"] for e in histories[0]]
    refused = httpx.post(f"{service_url}/recommend", json={"history": plain, "k": K}, timeout=30)
    assert refused.status_code == 422 and refused.json()["error"] == "missing_context"
    assert refused.json()["field"] == "ts" and refused.json()["model_version"] == "1"
    assert "model version 1 reads ts, rating, request_time" in refused.json()["detail"]
    theirs = httpx.post(f"{pyfunc_url}/invocations", json={"dataframe_records": [{"history": plain, "k": K}]}, timeout=60)
    assert theirs.status_code == 400 and "has no ts" in theirs.text
