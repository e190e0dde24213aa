"""The way users drive lite-rec: Prefect deployments run by a worker, models in the MLflow registry.

Starts a real Prefect server, a `cpu` worker and an MLflow tracking server on 127.0.0.1, deploys
`prefect.yaml`, runs `train/ml100k-smoke` (real ml-100k, tiny model) twice and `promote/ml100k`
once through the CLI, and checks the run record, the registry aliases, and that the champion
loaded as an MLflow pyfunc ranks exactly as the in-process recommender. Every process started
here is stopped by its PID (process group), also when an assertion fails.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from lite_rec import local_stack
from lite_rec.config import REPO_ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

MODEL = "lite-rec-ml100k"


@dataclass
class Stack:
    home: Path
    api_url: str
    mlflow_url: str
    data_dir: Path

    def prefect(self, *args: str, timeout_s: float = 900) -> str:
        proc = local_stack.prefect_cli(list(args), self.home, self.api_url, REPO_ROOT, timeout_s=timeout_s)
        return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("stack")
    home, data_dir = root / "prefect", root / "data"
    started: list[local_stack.Service] = []
    try:
        mlflow_svc = local_stack.start_mlflow(root / "mlflow")
        started.append(mlflow_svc)
        server = local_stack.start_prefect_server(home)
        started.append(server)
        worker_env = {"LITE_REC_DATA_DIR": str(data_dir), "MLFLOW_TRACKING_URI": mlflow_svc.url,
                      "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "TOKENIZERS_PARALLELISM": "false"}
        for pool in ("cpu", "gpu"):  # deploy refers to both; only cpu gets a worker here
            local_stack.prefect_cli(["work-pool", "create", pool, "--type", "process"], home, server.url, REPO_ROOT)
        started.append(local_stack.start_worker("cpu", home, server.url, REPO_ROOT, env=worker_env))
        yield Stack(home, server.url, mlflow_svc.url, data_dir)
    finally:
        for svc in reversed(started):
            local_stack.stop(svc)
        for svc in started:
            assert not local_stack._group_alive(svc.pid), f"{svc.name} (pid {svc.pid}) still running"


@pytest.fixture(scope="module")
def first_run(stack: Stack) -> str:
    out = stack.prefect("--no-prompt", "deploy", "--all")
    assert "train/ml100k-smoke" in out and "train/ml1m" in out
    return stack.prefect("deployment", "run", "train/ml100k-smoke", "--watch", "--watch-timeout", "1200")


def _client(stack: Stack):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=stack.mlflow_url, registry_uri=stack.mlflow_url)


def test_deployments_carry_schedule_pools_and_typed_parameters(stack: Stack, first_run: str) -> None:
    info = json.loads(stack.prefect("deployment", "inspect", "train/ml1m", "--output", "json"))
    assert info["work_pool_name"] == "gpu"
    assert info["parameters"] == {"dataset": "ml-1m", "profile": "paper"}
    assert [s["schedule"]["cron"] for s in info["schedules"]] == ["0 3 * * 1"]
    smoke = json.loads(stack.prefect("deployment", "inspect", "train/ml100k-smoke", "--output", "json"))
    assert smoke["work_pool_name"] == "cpu"


def test_train_deployment_registers_a_verified_champion(stack: Stack, first_run: str) -> None:
    assert "Completed" in first_run, first_run[-3000:]
    client = _client(stack)
    version = client.get_model_version_by_alias(MODEL, "champion")
    assert version.version == "1"
    assert client.get_model_version_by_alias(MODEL, "challenger").version == "1"
    run = client.get_run(version.run_id)
    for key in ("test_recall_10", "test_ndcg_10", "test_recall_20", "test_ndcg_20"):
        assert 0.0 <= run.data.metrics[key] <= 1.0
    assert run.data.params["dataset.name"] == "ml-100k" and run.data.params["profile"] == "smoke"
    assert client.get_metric_history(version.run_id, "valid_recall_10"), "per-epoch metrics missing"
    artifacts = {a.path for a in client.list_artifacts(version.run_id)}
    assert any("config" in a for a in artifacts), artifacts


def test_champion_pyfunc_matches_the_in_process_recommender(stack: Stack, first_run: str) -> None:
    import mlflow.pyfunc

    from lite_rec.recommender import Recommender

    os.environ["MLFLOW_TRACKING_URI"] = stack.mlflow_url
    try:
        model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    bundles = sorted(stack.data_dir.glob("runs/ml-100k/models/*/bundle"))
    assert len(bundles) == 1
    local = Recommender.from_path(bundles[0])
    items = pd.read_parquet(stack.data_dir / "processed/ml-100k/items.parquet")["item_id"].tolist()
    histories = [items[:5], items[10:30], items[100:101]]
    got = model.predict(pd.DataFrame({"history": histories, "k": [10, 10, 10]}))
    want = local.recommend(histories, 10)
    assert [list(r) for r in got["item_ids"]] == [r.item_ids for r in want]


def test_second_run_and_promote_move_aliases_by_the_rule(stack: Stack, first_run: str) -> None:
    out = stack.prefect("deployment", "run", "train/ml100k-smoke", "--param", 'overrides={"train": {"seed": 7}}',
                        "--watch", "--watch-timeout", "1200")
    assert "Completed" in out, out[-3000:]
    client = _client(stack)
    assert client.get_model_version_by_alias(MODEL, "challenger").version == "2"
    assert client.get_model_version_by_alias(MODEL, "champion").version == "1"  # a new version is never champion by itself
    out = stack.prefect("deployment", "run", "promote/ml100k", "--watch", "--watch-timeout", "600")
    assert "Completed" in out, out[-3000:]
    tags = client.get_model_version(MODEL, "2").tags
    challenger, champion = float(tags["promotion.challenger_score"]), float(tags["promotion.champion_score"])
    margin = float(tags["promotion.margin"])
    promoted = challenger > champion + margin
    assert tags["promotion.decision"] == ("promoted" if promoted else "rejected"), tags
    assert client.get_model_version_by_alias(MODEL, "champion").version == ("2" if promoted else "1")
    assert f"promotion.vs_v2" in client.get_model_version(MODEL, "1").tags
