"""scripts/gap_breakdown.py on tiny trained models: users fall into exactly one gap bucket by
hand-computed gaps, each model's "all" bucket equals its training run's test metrics (a query-time
model read its test item's time as the run did), and a file without the timestamps is refused."""

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
    spec = importlib.util.spec_from_file_location("gap_breakdown", REPO_ROOT / "scripts" / "gap_breakdown.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dated(sequences: pd.DataFrame) -> pd.DataFrame:
    """Timestamps one second apart, and a test item 0 s, 30 s, 10 min or 2 h after the validation item."""
    out = _timed(sequences, tied=False)
    out["test_ts"] = out["valid_ts"] + [(0, 30, 600, 7_200)[i % 4] for i in range(len(out))]
    return out


def test_buckets_of_hand_computed_gaps() -> None:
    frame = pd.DataFrame({"valid_ts": [100, 100, 100, 100, 100], "test_ts": [100, 159, 160, 3_699, 3_700]})
    got = {name: users.tolist() for name, users in _script().gap_buckets(frame).items()}
    assert got == {"all": [True] * 5, "same second": [True, False, False, False, False],
                   "1-59 s": [False, True, False, False, False], "1-59 min": [False, False, True, True, False],
                   "1 h or more": [False, False, False, False, True]}


def test_each_model_scores_its_runs_test_over_all_users_and_a_file_without_times_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sequences = _dated(tiny_sequences())
    onepass = {"train.strategy": "onepass", "train.max_epochs": 1}
    queried = train_model(_cfg(**onepass, **{"model.query_time": "true"}), sequences, tiny_vectors(), tmp_path / "q",
                          progress=False)
    plain = train_model(_cfg(**onepass), sequences, tiny_vectors(), tmp_path / "p", progress=False)
    (tmp_path / "processed").mkdir()
    sequences.to_parquet(tmp_path / "processed" / "sequences.parquet")
    out = tmp_path / "out" / "gaps.json"
    argv = ["--processed-dir", str(tmp_path / "processed"), "--out", str(out), "--device", "cpu"]
    assert _script().main([*argv, "--model", str(queried.out_dir), "--model", str(plain.out_dir)]) == 0
    results = json.loads(out.read_text())
    assert results["users"] == {"all": 24, "same second": 6, "1-59 s": 6, "1-59 min": 6, "1 h or more": 6}
    for run in (queried, plain):
        buckets = results["models"][str(run.out_dir)]["buckets"]
        for key in ("test_masked_recall_10", "test_masked_ndcg_10", "test_unmasked_ndcg_20"):
            assert buckets["all"][key] == pytest.approx(run.metrics[key], abs=1e-9), key
        assert sum(buckets[b]["test_users"] for b in ("same second", "1-59 s", "1-59 min", "1 h or more")) == 24
    assert results["models"][str(queried.out_dir)]["spec"]["query_time"] is True
    written = out.read_text()
    sequences.drop(columns=["test_ts"]).to_parquet(tmp_path / "processed" / "sequences.parquet")
    assert _script().main([*argv, "--model", str(plain.out_dir)]) == 2
    assert "no column(s) test_ts" in capsys.readouterr().err
    assert out.read_text() == written  # a refused call leaves the earlier results alone
