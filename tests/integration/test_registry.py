"""Registry end to end against a real ``mlflow server`` on 127.0.0.1 (sqlite backend, proxied
artifacts): log a model trained for one epoch, register it, check aliases and pyfunc parity,
then promote (better -> moves, worse -> stays), roll back, and fail a registration midway.

The server is the run's shared one (tests/conftest.py ``mlflow_server``). These tests keep the
default registered-model and experiment names; the other modules that use ``run`` (and so the
same server) name their own ``MODEL``, and ``run`` registers under that name in an experiment of
the same name, so no module sees another's versions or aliases."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

import mlflow
from lite_rec.core.config import LiteRecConfig, build_config
from lite_rec.infer.bundle import load_bundle, save_bundle
from lite_rec.infer.recommender import Recommender
from lite_rec.registry.client import mlflow_uris
from lite_rec.registry.promotion import load_held_out, promote, rollback, score_recommender
from lite_rec.registry.publish import log_training_run, register_verified, remove_unverified_versions
from lite_rec.registry.versions import CHALLENGER, CHAMPION, RegistryError, alias_version, champion_history
from lite_rec.train.run import TrainResult, train_model

pytestmark = pytest.mark.integration

N_ITEMS = 20
VALID_TARGET = N_ITEMS - 1  # every user's validation item: what promotion scores
MODEL = "lite-rec-ml100k"


# ---------------------------------------------------------------------------------------------
# A tiny hand-made dataset, a one-epoch model, its bundle


@dataclass(frozen=True)
class Run:
    cfg: LiteRecConfig
    result: TrainResult
    bundle_dir: Path
    vectors_manifest: Path


def _write_dataset(cfg: LiteRecConfig) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    rows = []
    for u in range(24):
        seq = [int(x) for x in rng.choice(np.arange(1, VALID_TARGET), size=5, replace=False)]
        # everyone's validation target is VALID_TARGET: promotion scores it, and a variant that ranks it
        # first (last) everywhere scores exactly 1 (0)
        rows.append({"user_idx": u, "user_id": f"u{u}", "train_seq": seq, "valid_item_idx": VALID_TARGET, "test_item_idx": N_ITEMS})
    sequences = pd.DataFrame(rows)
    items = pd.DataFrame({"item_idx": range(1, N_ITEMS + 1), "item_id": [f"i{i}" for i in range(1, N_ITEMS + 1)],
                          "title": [f"Movie {i} (1999)" for i in range(1, N_ITEMS + 1)]})
    out = cfg.processed_dir
    (out / "validation").mkdir(parents=True)
    items.to_parquet(out / "items.parquet", index=False)
    sequences.to_parquet(out / "sequences.parquet", index=False)
    (out / "stats.json").write_text(json.dumps({"users": 24, "items": N_ITEMS, "interactions": 24 * 7}))
    (out / "validation" / "interactions.json").write_text(json.dumps({"success": True}))
    return sequences


@pytest.fixture(scope="module")
def run(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Run:
    root = tmp_path_factory.mktemp("run")
    tracking = {"tracking_uri": mlflow_server, "promote_metric": "valid_ndcg_10", "promote_margin": 0.01}
    model = getattr(request.module, "MODEL", MODEL)
    if model != MODEL:  # another module on the shared server: its own registered model and experiment
        tracking |= {"registered_model": model, "experiment": model}
    cfg = build_config("ml-100k", {
        "data_dir": str(root / "data"),
        "model": {"backbone": "lean", "pretrained": False, "d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32,
                  "dropout": 0.0, "max_seq_len": 5},
        "train": {"strategy": "sampling", "max_epochs": 1, "batch_size": 8, "device": "cpu"},
        "tracking": tracking,
    })
    sequences = _write_dataset(cfg)
    torch.manual_seed(0)
    vectors = torch.randn(N_ITEMS + 1, 8)
    vectors[0] = 0
    result = train_model(cfg, sequences, vectors, root / "model", progress=False)
    manifest = root / "vectors_manifest.json"
    manifest.write_text(json.dumps({"encoder_id": "random-test-vectors", "dim": 8}))
    from lite_rec.train.export import build_bundle

    return Run(cfg, result, build_bundle(cfg, root / "model", root / "bundle-v1"), manifest)


def _variant(run: Run, name: str, sign: float) -> Path:
    """The v1 bundle with the validation target's head row pointed along (`sign` +1) or against (-1)
    every user's vector, and longer than any logit the other rows give: the target then ranks first
    (last) for every user, so the variant's promotion score is exactly 1 (0)."""
    b = load_bundle(run.bundle_dir)
    tensors = dict(b.tensors)
    seqs = pd.read_parquet(run.cfg.processed_dir / "sequences.parquet")
    items = torch.tensor([list(s) for s in seqs["train_seq"]])  # (U, 5): the validation histories
    with torch.no_grad():
        users = Recommender.from_path(run.bundle_dir).model.user_vectors(items).float()  # (U, D)
    shared = torch.nn.functional.normalize(users, dim=1).sum(0)  # (D,) a direction every user leans to
    along = users @ shared  # (U,)
    assert along.min() > 0, "the users' vectors share no direction; pick another seed"
    weight = tensors["head.weight"].clone()  # (N+1, D)
    reach = (users @ weight.T).abs().max()  # the largest logit any row gives any user
    weight[VALID_TARGET] = sign * shared * (4 * reach + 1) / along.min()
    tensors["head.weight"] = weight
    return save_bundle(run.bundle_dir.parent / name, spec=b.spec, model_config=b.model_config, state_dict=tensors,
                       items=b.items, popularity=b.popularity, dataset=b.dataset, protocol=b.protocol, extra=b.extra)


@pytest.fixture(scope="module")
def v1(run: Run):
    return log_training_run(run.cfg, run.result, run.bundle_dir, item_vectors_manifest=run.vectors_manifest, commit="abc123")


# ---------------------------------------------------------------------------------------------


def test_first_version_is_challenger_and_champion_with_full_run_record(run: Run, v1, mlflow_server: str) -> None:
    client = MlflowClient(mlflow_server, registry_uri=mlflow_server)  # never the process-wide registry URI another module set
    assert (v1.name, v1.version, v1.aliases) == (MODEL, "1", (CHALLENGER, CHAMPION))
    assert alias_version(client, MODEL, CHAMPION).version == "1"
    assert champion_history(client, MODEL) == ["1"]
    assert client.get_model_version(MODEL, "1").tags["verified"] == "true"

    r = client.get_run(v1.run_id)
    assert client.get_experiment(r.info.experiment_id).name == "lite-rec-ml-100k"
    assert r.data.params["model.d_model"] == "16" and r.data.params["train.strategy"] == "sampling"
    assert r.data.params["dataset.name"] == "ml-100k"
    for key in ("test_ndcg_10", "test_recall_10", "valid_recall_10", "test_masked_ndcg_10", "train_loss", "lr", "samples_per_s"):
        assert key in r.data.metrics, key
    assert r.data.metrics["test_ndcg_10"] == pytest.approx(run.result.metrics["test_ndcg_10"])
    loss_points = client.get_metric_history(v1.run_id, "train_loss")
    assert [(m.step, m.value) for m in loss_points] == [(1, pytest.approx(run.result.history[0]["loss"]))]
    tags = r.data.tags
    assert tags["git_commit"] == "abc123" and tags["backbone_weights"] == "random"
    assert json.loads(tags["protocol"])["exclude_history"] is True and tags["protocol.k_core"] == "5"
    assert len(tags["data_fingerprint"]) == 64 and tags["item_encoder"] == "all-MiniLM-L6-v2"
    assert tags["registered_model_version"] == f"{MODEL}/1"

    arts = {a.path for a in client.list_artifacts(v1.run_id)}
    assert {"config.json", "plots", "training", "data", "item_vectors"} <= arts
    plots = {a.path for a in client.list_artifacts(v1.run_id, "plots")}
    assert plots == {"plots/training_curves.png", "plots/validation_metrics.png"}
    local = Path(mlflow.artifacts.download_artifacts(run_id=v1.run_id, artifact_path="plots/training_curves.png",
                                                     tracking_uri=mlflow_server))
    assert local.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {a.path for a in client.list_artifacts(v1.run_id, "data/validation")} == {"data/validation/interactions.json"}
    assert {a.path for a in client.list_artifacts(v1.run_id, "item_vectors")} == {"item_vectors/vectors_manifest.json"}


def test_champion_pyfunc_gives_the_in_process_top_k(run: Run, v1, mlflow_server: str) -> None:
    with mlflow_uris(MlflowClient(mlflow_server, registry_uri=mlflow_server)):
        model = mlflow.pyfunc.load_model(f"models:/{MODEL}@{CHAMPION}")
    rec = Recommender.from_path(run.bundle_dir)
    held = load_held_out(run.cfg)
    histories = [held.histories[0], held.histories[5], [], ["i3", "i4", "i5", "i6", "i7", "i8", "i9"]]
    out = model.predict(pd.DataFrame({"history": histories, "k": [5, 5, 5, 5]}))
    expected = rec.recommend(histories, k=5)
    assert list(out.columns) == ["item_ids", "scores", "titles", "fallback"]
    for row, want in zip(out.itertuples(), expected):
        assert list(row.item_ids) == want.item_ids
        assert list(row.scores) == pytest.approx(want.scores, abs=1e-5)
        assert list(row.titles) == want.titles
        assert row.fallback == want.fallback
    assert list(out["fallback"]) == [False, False, True, False]
    # Optional columns default (k=10), and options per row.
    out = model.predict(pd.DataFrame({"history": [histories[0]]}))
    assert len(out["item_ids"].iloc[0]) == 10


def test_promote_moves_champion_only_for_a_better_challenger_then_rollback(run: Run, v1, mlflow_server: str) -> None:
    client = MlflowClient(mlflow_server, registry_uri=mlflow_server)  # never the process-wide registry URI another module set
    held = load_held_out(run.cfg)
    v1_score = score_recommender(Recommender.from_path(run.bundle_dir), held, "valid_ndcg_10")
    assert v1_score < 0.99  # the one-epoch model never saw the target as a training target

    v2 = log_training_run(run.cfg, run.result, _variant(run, "bundle-better", 1.0), commit="abc123")
    assert (v2.version, v2.aliases) == ("2", (CHALLENGER,))
    assert alias_version(client, MODEL, CHAMPION).version == "1"  # registering never moves champion
    decision = promote(run.cfg)
    assert decision.promoted and decision.champion_after == "2" and decision.champion_version == "1"
    assert decision.challenger_score == pytest.approx(1.0) and decision.champion_score == pytest.approx(v1_score)
    assert alias_version(client, MODEL, CHAMPION).version == "2"
    tags2 = client.get_model_version(MODEL, "2").tags
    assert tags2["promotion.decision"] == "promoted" and tags2["promotion.compared_with"] == "1"
    assert float(tags2["promotion.champion_score"]) == pytest.approx(v1_score)
    assert float(tags2["promotion.margin"]) == 0.01
    assert json.loads(client.get_model_version(MODEL, "1").tags["promotion.vs_v2"])["promoted"] is True

    v3 = log_training_run(run.cfg, run.result, _variant(run, "bundle-worse", -1.0), commit="abc123")
    decision = promote(run.cfg)
    assert not decision.promoted and decision.champion_after == "2" and decision.challenger_version == v3.version == "3"
    assert decision.challenger_score == pytest.approx(0.0)
    assert alias_version(client, MODEL, CHAMPION).version == "2"
    assert alias_version(client, MODEL, CHALLENGER).version == "3"
    assert client.get_model_version(MODEL, "3").tags["promotion.decision"] == "rejected"
    assert json.loads(client.get_model_version(MODEL, "2").tags["promotion.vs_v3"])["champion_score"] == pytest.approx(1.0)
    assert champion_history(client, MODEL) == ["1", "2"]

    assert rollback(MODEL, client=client) == "1"
    assert alias_version(client, MODEL, CHAMPION).version == "1"
    assert champion_history(client, MODEL) == ["1"]
    with pytest.raises(RegistryError, match="no previous champion to roll back to"):
        rollback(MODEL, client=client)
    assert alias_version(client, MODEL, CHAMPION).version == "1"


def test_failed_registration_leaves_no_version_behind(run: Run, v1, mlflow_server: str) -> None:
    """Verification fails midway (the stored bundle is not the one we claim): the version goes."""
    client = MlflowClient(mlflow_server, registry_uri=mlflow_server)  # never the process-wide registry URI another module set
    before = sorted(int(m.version) for m in client.search_model_versions(f"name = '{MODEL}'"))
    champion = alias_version(client, MODEL, CHAMPION).version
    wrong = load_bundle(_variant(run, "bundle-claimed", 0.5))
    source = client.get_model_version(MODEL, "1")
    model_id = source.source.removeprefix("models:/")  # the logged model behind version 1
    with pytest.raises(RegistryError, match="stored bundle differs from the logged one"):
        register_verified(client, MODEL, source.source, model_id, source.run_id, wrong, {})
    after = sorted(int(m.version) for m in client.search_model_versions(f"name = '{MODEL}'"))
    assert after == before
    assert alias_version(client, MODEL, CHAMPION).version == champion
    # A model this call created is removed with its only version.
    with pytest.raises(RegistryError):
        register_verified(client, "lite-rec-never", source.source, model_id, source.run_id, wrong, {})
    assert client.search_registered_models("name = 'lite-rec-never'") == []


def test_a_registration_that_fails_midway_is_one_clear_error_and_keeps_no_run(
    run: Run, v1, mlflow_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure after the MLflow run was opened (here: the signature file cannot be read, as a wheel
    install that looked for it in the wrong folder did) leaves no FAILED run and no version."""
    from lite_rec.registry import publish
    from lite_rec.registry.tracking import experiment_name

    client = MlflowClient(mlflow_server, registry_uri=mlflow_server)
    experiment = client.get_experiment_by_name(experiment_name(run.cfg)).experiment_id
    runs_before = sorted(r.info.run_id for r in client.search_runs([experiment]))
    versions_before = sorted(int(m.version) for m in client.search_model_versions(f"name = '{MODEL}'"))

    def unreadable_signature(path: Path = Path("/site-packages/mlflow/signature.json")):
        raise FileNotFoundError(2, "No such file or directory", str(path))

    monkeypatch.setattr(publish, "model_signature", unreadable_signature)
    with pytest.raises(RegistryError, match=r"registering lite-rec-ml100k at .* failed: FileNotFoundError: .*signature\.json"
                                            r".*No run or version was kept; the trained model stays in") as caught:
        log_training_run(run.cfg, run.result, run.bundle_dir, commit="abc123")
    assert not isinstance(caught.value, publish.RegistryUnavailable)  # retrying would fail the same way
    assert sorted(r.info.run_id for r in client.search_runs([experiment])) == runs_before
    assert sorted(int(m.version) for m in client.search_model_versions(f"name = '{MODEL}'")) == versions_before


def test_sweep_removes_versions_a_killed_process_left_unverified(run: Run, v1, mlflow_server: str) -> None:
    """A process killed between creating and verifying a version leaves it untagged: swept."""
    client = MlflowClient(mlflow_server, registry_uri=mlflow_server)  # never the process-wide registry URI another module set
    source = client.get_model_version(MODEL, "1")
    orphan = client.create_model_version(MODEL, source.source, run_id=source.run_id,
                                         model_id=source.source.removeprefix("models:/"))
    assert remove_unverified_versions(client, MODEL) == []  # younger than 10 minutes: maybe still running
    assert remove_unverified_versions(client, MODEL, min_age_s=0) == [str(orphan.version)]
    remaining = {m.version for m in client.search_model_versions(f"name = '{MODEL}'")}
    assert str(orphan.version) not in remaining and "1" in remaining
