"""The way users drive lite-rec: Prefect deployments run by a worker, models in the MLflow registry.

Uses the run's Prefect and MLflow servers on 127.0.0.1 (tests/conftest.py ``prefect_api``,
``mlflow_server``), starts a `cpu` worker, deploys `prefect.yaml`, runs `train/ml100k-smoke`
(real ml-100k, tiny model) twice and `promote/ml100k` once through the CLI, and checks the run
record, the registry aliases, and that the champion loaded as an MLflow pyfunc ranks exactly as
the in-process recommender. Every process started here is stopped by its PID (process group),
also when an assertion fails.

Every deployment run gets the same ``overrides`` parameter (``Stack.overrides``): the module's own
registered model and experiment (``tracking.registered_model`` / ``tracking.experiment``, as every
module on the shared MLflow server has; the default names are checked by test_cli_flows, the
wheel test and test_registry), and ``item_encoder.model``: a tiny random-weight BERT with the
real MiniLM tokenizer (as in tests/unit/items/test_encoder.py), so the flow's item-encoding task
runs the real encoder code on every item title without half a minute of MiniLM on two cores
(the real MiniLM is loaded by tests/unit/items/test_encoder.py).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from lite_rec.core.config import REPO_ROOT
from lite_rec.pipeline import stack as local_stack
from tests.unit.items.test_encoder import save_tiny_bert

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

MODEL = "lite-rec-e2e-deployment"


@dataclass
class Stack:
    home: Path
    api_url: str
    mlflow_url: str
    data_dir: Path
    worker_env: dict[str, str]
    started: list[local_stack.Service]  # stopped by the fixture, last first
    encoder: Path  # the item LLM of every train run (the module docstring says why)

    def overrides(self, **sections: dict) -> str:
        """``--param`` value of a deployment run: this module's model names, the tiny item encoder and
        `sections` (``train={...}``)."""
        return "overrides=" + json.dumps({"tracking": {"registered_model": MODEL, "experiment": MODEL},
                                          "item_encoder": {"model": str(self.encoder)}, **sections})

    def prefect(self, *args: str, timeout_s: float = 900) -> str:
        proc = local_stack.prefect_cli(list(args), self.home, self.api_url, REPO_ROOT, timeout_s=timeout_s)
        return proc.stdout + proc.stderr

    def start_worker(self, **extra_env: str) -> local_stack.Service:
        worker = local_stack.start_worker("cpu", self.home, self.api_url, REPO_ROOT, env={**self.worker_env, **extra_env})
        self.started.append(worker)
        return worker


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, prefect_api: str, mlflow_server: str) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("stack")
    home, data_dir = root / "prefect", root / "data"
    started: list[local_stack.Service] = []
    try:
        # PREFECT_WORKER_QUERY_SECONDS: the worker looks for a new flow run every 2 s, not 10
        worker_env = {"LITE_REC_DATA_DIR": str(data_dir), "MLFLOW_TRACKING_URI": mlflow_server,
                      "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "TOKENIZERS_PARALLELISM": "false",
                      "PREFECT_WORKER_QUERY_SECONDS": "2"}
        # deploy refers to both pools; only cpu gets a worker here (start_worker creates its pool)
        local_stack.prefect_cli(["work-pool", "create", "gpu", "--type", "process"], home, prefect_api, REPO_ROOT)
        stack = Stack(home, prefect_api, mlflow_server, data_dir, worker_env, started, save_tiny_bert(root / "tiny-bert"))
        stack.start_worker()
        yield stack
    finally:
        for svc in reversed(started):
            local_stack.stop(svc)
        for svc in started:
            assert not local_stack._group_alive(svc.pid), f"{svc.name} (pid {svc.pid}) still running"


@pytest.fixture(scope="module")
def first_run(stack: Stack) -> str:
    out = stack.prefect("--no-prompt", "deploy", "--all")
    assert "train/ml100k-smoke" in out and "train/ml1m" in out
    return stack.prefect("deployment", "run", "train/ml100k-smoke", "--param", stack.overrides(), "--watch",
                         "--watch-timeout", "1200")


def _client(stack: Stack):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=stack.mlflow_url, registry_uri=stack.mlflow_url)


def test_deployments_carry_schedule_pools_and_typed_parameters(stack: Stack, first_run: str) -> None:
    info = json.loads(stack.prefect("deployment", "inspect", "train/ml1m", "--output", "json"))
    assert info["work_pool_name"] == "gpu"
    assert info["parameters"] == {"dataset": "ml-1m", "profile": "gpu"}
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

    from lite_rec.infer.recommender import Recommender
    from lite_rec.registry.client import mlflow_uris

    with mlflow_uris(_client(stack)):  # the process-wide URIs may still name another module's stopped server
        model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    bundles = sorted(stack.data_dir.glob("runs/ml-100k/models/*/bundle"))
    assert len(bundles) == 1
    local = Recommender.from_path(bundles[0])
    items = pd.read_parquet(stack.data_dir / "processed/ml-100k/items.parquet")["item_id"].tolist()
    histories = [items[:5], items[10:30], items[100:101]]
    got = model.predict(pd.DataFrame({"history": histories, "k": [10, 10, 10]}))
    want = local.recommend(histories, 10)
    assert [list(r) for r in got["item_ids"]] == [r.item_ids for r in want]


def test_second_run_and_promote_move_aliases_by_the_rule(stack: Stack, first_run: str) -> None:
    out = stack.prefect("deployment", "run", "train/ml100k-smoke", "--param", stack.overrides(train={"seed": 7, "max_epochs": 1}),
                        "--watch", "--watch-timeout", "1200")
    assert "Completed" in out, out[-3000:]
    client = _client(stack)
    assert client.get_model_version_by_alias(MODEL, "challenger").version == "2"
    assert client.get_model_version_by_alias(MODEL, "champion").version == "1"  # a new version is never champion by itself
    out = stack.prefect("deployment", "run", "promote/ml100k", "--param", stack.overrides(), "--watch", "--watch-timeout", "600")
    assert "Completed" in out, out[-3000:]
    tags = client.get_model_version(MODEL, "2").tags
    challenger, champion = float(tags["promotion.challenger_score"]), float(tags["promotion.champion_score"])
    margin = float(tags["promotion.margin"])
    promoted = challenger > champion + margin
    assert tags["promotion.decision"] == ("promoted" if promoted else "rejected"), tags
    assert client.get_model_version_by_alias(MODEL, "champion").version == ("2" if promoted else "1")
    assert "promotion.vs_v2" in client.get_model_version(MODEL, "1").tags


def _wait_for_mid_training_checkpoint(runs: Path, known: set[Path], timeout_s: float = 600) -> Path:
    """The resume summary of a new run folder, once it is past its first epoch and mid-way in another."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for summary in runs.glob("*/checkpoints/resume.json"):
            if summary.parents[1] in known:
                continue
            try:
                state = json.loads(summary.read_text())
            except (OSError, ValueError):
                continue  # being replaced
            if state["stage"] == 1 and state["epoch"] >= 1 and state["step"] > 0:
                return summary.parents[1]
        time.sleep(0.2)
    raise AssertionError(f"no mid-training checkpoint under {runs} within {timeout_s} s")


def test_worker_killed_mid_training_then_rerun_resumes_and_registers(stack: Stack, first_run: str) -> None:
    """Kill -9 the worker and its flow run mid-epoch; re-running the deployment continues the checkpoint."""
    client = _client(stack)
    versions_before = {v.version for v in client.search_model_versions(f"name = '{MODEL}'")}
    champion_before = client.get_model_version_by_alias(MODEL, "champion").version
    runs = stack.data_dir / "runs" / "ml-100k" / "models"
    known = set(runs.iterdir())
    for worker in list(stack.started):
        if worker.name == "worker-cpu":
            local_stack.stop(worker)
    # same results, slower pace: time to kill it mid-epoch (83 steps an epoch: epoch 2 lasts 12 s or more,
    # and the checkpoint is looked for every 0.2 s)
    slow = stack.start_worker(LITE_REC_STEP_SLEEP="0.15")
    # killed in epoch 2 (the first checkpoint past epoch 1), so the re-run has that epoch to finish
    params = stack.overrides(train={"seed": 11, "max_epochs": 2, "checkpoint_every_steps": 2})
    out = stack.prefect("deployment", "run", "train/ml100k-smoke", "--param", params)
    assert "train/ml100k-smoke" in out
    run_dir = _wait_for_mid_training_checkpoint(runs, known)
    victims = [slow.pid, *local_stack.descendants(slow.pid)]
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() and "Z" not in _state(pid) for pid in victims) and time.monotonic() < deadline:
        time.sleep(0.2)
    killed_at = json.loads((run_dir / "checkpoints" / "resume.json").read_text())
    assert not (run_dir / "metrics.json").exists()
    assert {v.version for v in client.search_model_versions(f"name = '{MODEL}'")} == versions_before  # nothing half-registered

    worker = stack.start_worker()
    out = stack.prefect("deployment", "run", "train/ml100k-smoke", "--param", params, "--watch", "--watch-timeout", "1200")
    assert "Completed" in out, out[-3000:]
    assert "'resumed': True" in worker.log.read_text(errors="replace"), "the re-run started over instead of resuming"
    history = json.loads((run_dir / "history.json").read_text())
    epochs = [h["epoch"] for h in history if h["stage"] == 1]
    assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) > killed_at["epoch"], epochs  # each epoch once
    new = {v.version for v in client.search_model_versions(f"name = '{MODEL}'")} - versions_before
    assert len(new) == 1, new
    version = client.get_model_version(MODEL, new.pop())
    assert version.status == "READY" and "challenger" in version.aliases
    assert client.get_run(version.run_id).info.status == "FINISHED"
    assert client.get_model_version_by_alias(MODEL, "champion").version == champion_before  # promote decides, not training


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"
