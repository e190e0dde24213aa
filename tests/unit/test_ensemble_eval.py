"""scripts/ensemble_eval.py on tiny trained models: each member scores as its own training run did
(input contexts, and the whole history for a history score, included), the ensemble is scored
beside them, and members that cannot share one input, or a file without the columns their
context needs, are refused with exit status 2."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest

from lite_rec.config import REPO_ROOT
from lite_rec.train import train_model
from tests.unit.test_train import _cfg, _timed, tiny_sequences, tiny_vectors


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ensemble_eval", REPO_ROOT / "scripts" / "ensemble_eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _members(tmp_path: Path, sequences: pd.DataFrame, **settings: str) -> list:
    """Two one-epoch onepass models of the given settings, seeds 0 and 1."""
    runs = []
    for seed in (0, 1):
        cfg = _cfg(**{"train.strategy": "onepass", "train.max_epochs": 1, "train.seed": seed, **settings})
        name = "-".join(k.split(".")[-1] for k in settings) or "plain"
        runs.append(train_model(cfg, sequences, tiny_vectors(), tmp_path / f"{name}-{seed}", progress=False))
    return runs


def test_members_score_as_their_runs_did_and_the_ensemble_beside_them(tmp_path: Path) -> None:
    sequences = _timed(tiny_sequences(), tied=False)
    (tmp_path / "processed").mkdir()
    sequences.to_parquet(tmp_path / "processed" / "sequences.parquet")
    runs = _members(tmp_path, sequences, **{"model.time_gaps": "true", "model.time_bias": "true"})
    out = tmp_path / "out" / "ensemble.json"
    argv = ["--processed-dir", str(tmp_path / "processed"), "--out", str(out), "--device", "cpu"]
    assert _script().main([*argv, *(a for r in runs for a in ("--model", str(r.out_dir)))]) == 0
    results = json.loads(out.read_text())
    assert results["members"] == [str(r.out_dir) for r in runs]
    assert set(results["scores"]) == {*results["members"], "ensemble-logprob", "ensemble-prob"}
    for run in runs:  # the script reads the contexts as training and its evaluation did
        scored = results["scores"][str(run.out_dir)]["metrics"]
        for key in ("valid_masked_recall_10", "test_masked_ndcg_10", "test_unmasked_recall_20"):
            assert scored[key] == pytest.approx(run.metrics[key], abs=1e-9), key
    assert results["scores"]["ensemble-logprob"]["metrics"]["test_users"] == 24.0


def test_members_that_cannot_share_one_input_or_a_file_without_their_columns_are_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sequences = _timed(tiny_sequences(), tied=False)
    gaps = _members(tmp_path, sequences, **{"model.time_gaps": "true"})[0]
    biased = _members(tmp_path, sequences, **{"model.time_bias": "true"})[0]
    plain = _members(tmp_path, sequences)[0]
    (tmp_path / "processed").mkdir()
    sequences.to_parquet(tmp_path / "processed" / "sequences.parquet")
    argv = ["--processed-dir", str(tmp_path / "processed"), "--out", str(tmp_path / "e.json"), "--device", "cpu"]
    assert _script().main([*argv, "--model", str(gaps.out_dir), "--model", str(biased.out_dir)]) == 2
    assert "members read different input contexts: model.time_bias; model.time_gaps" in capsys.readouterr().err
    assert not (tmp_path / "e.json").exists()
    assert _script().main([*argv, "--model", str(gaps.out_dir), "--model", str(plain.out_dir)]) == 0  # plain ignores it
    written = (tmp_path / "e.json").read_text()
    sequences.drop(columns=["train_ts", "valid_ts"]).to_parquet(tmp_path / "processed" / "sequences.parquet")
    assert _script().main([*argv, "--model", str(biased.out_dir)]) == 2
    assert "re-run `lite-rec ingest" in capsys.readouterr().err
    assert (tmp_path / "e.json").read_text() == written  # a refused call leaves the earlier results alone


def test_members_with_a_history_logit_get_the_whole_history_as_their_runs_did(tmp_path: Path) -> None:
    """The unmasked ranking of a history-logit model needs the user's history passed to it; the
    script must score such members as their training run's evaluation did, not without it."""
    from lite_rec.checkpoint import load_model
    from lite_rec.evaluate import build_eval_set, evaluate_scores, model_scorer

    sequences = tiny_sequences()
    (tmp_path / "processed").mkdir()
    sequences.to_parquet(tmp_path / "processed" / "sequences.parquet")
    runs = _members(tmp_path, sequences, **{"model.history_logit": "true", "train.max_epochs": "3", "train.lr": "0.01"})
    out = tmp_path / "out" / "ensemble.json"
    argv = ["--processed-dir", str(tmp_path / "processed"), "--out", str(out), "--device", "cpu"]
    assert _script().main([*argv, *(a for r in runs for a in ("--model", str(r.out_dir)))]) == 0
    scores = json.loads(out.read_text())["scores"]
    for run in runs:
        assert run.metrics["history_logit"] < -1.0
        scored = scores[str(run.out_dir)]["metrics"]
        for key in ("test_unmasked_recall_10", "test_unmasked_ndcg_20", "test_masked_ndcg_10"):
            assert scored[key] == pytest.approx(run.metrics[key], abs=1e-9), key
    model, _ = load_model(runs[0].out_dir)
    blind = evaluate_scores(model_scorer(model.eval(), device="cpu"), build_eval_set(sequences, "test"),
                            max_len=model.spec.max_seq_len, progress=False)  # the history not passed
    assert blind["test_unmasked_ndcg_20"] != pytest.approx(runs[0].metrics["test_unmasked_ndcg_20"], abs=1e-9)
