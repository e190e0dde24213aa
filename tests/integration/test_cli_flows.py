"""`lite-rec train` and `lite-rec ingest --prefect` on real ml-100k (Prefect in-process, no servers):
the CLI's flags reach the flows."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lite_rec.core.config import REPO_ROOT, LiteRecConfig

BAR = "%|"  # what every tqdm bar prints, ours and third-party ones


def _cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_HOME": str(data_dir / "prefect-home")}
    cmd = [sys.executable, "-m", "lite_rec_flows.cli", *args, "--data-dir", str(data_dir)]
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)


def _train(data_dir: Path, *flags: str) -> subprocess.CompletedProcess:
    return _cli(data_dir, "train", "ml-100k", "--profile", "smoke", "--no-register", *flags)


def test_no_progress_silences_every_bar_of_the_train_flow(tmp_path: Path, ml100k_config: LiteRecConfig) -> None:
    (tmp_path / "raw").symlink_to(ml100k_config.data_dir / "raw")  # the downloaded dump, not the outputs
    quiet = _train(tmp_path, "--no-progress")
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    table = quiet.stdout.split("metrics (test)")[1].split("model folder")[0].splitlines()
    assert table[0].split()[:2] == ["masked", "unmasked"] and [r.split()[0] for r in table[1:5]] == \
        ["recall_10", "recall_20", "ndcg_10", "ndcg_20"]  # both protocols, one row per metric
    assert "history score" not in quiet.stdout  # only for models with model.history_logit
    assert BAR not in quiet.stderr + quiet.stdout  # ingest, item encoding, weights loading, training, evaluation
    # the same run again with bars: the finished model is reloaded and re-evaluated, and the bars show
    loud = _train(tmp_path)
    assert loud.returncode == 0, loud.stderr[-3000:]
    assert "eval test" in loud.stderr and BAR in loud.stderr
    assert loud.stdout.split("metrics (test")[1].split("model folder")[0] == \
        quiet.stdout.split("metrics (test")[1].split("model folder")[0]  # bars never change a result


def test_ingest_through_prefect_honours_force_and_no_progress(tmp_path: Path, ml100k_config: LiteRecConfig) -> None:
    (tmp_path / "raw").symlink_to(ml100k_config.data_dir / "raw")
    runs = [_cli(tmp_path, "ingest", "ml-100k", "--prefect", "--no-progress", *flags) for flags in ([], [], ["--force"])]
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
        assert BAR not in run.stderr + run.stdout
    assert "written in" in runs[0].stdout and "up to date (skipped)" in runs[1].stdout
    assert "written in" in runs[2].stdout  # --force redoes the data stage through the flow too


def test_a_model_that_could_not_be_registered_is_refused_before_the_flow_starts(tmp_path: Path) -> None:
    run = _cli(tmp_path, "train", "ml-100k", "--profile", "smoke", "--set", "model.time_gaps=true")
    assert run.returncode == 2
    assert "cannot be registered or served yet" in run.stderr and "--no-register" in run.stderr
    assert "prefect" not in (run.stderr + run.stdout).lower()  # no flow, no temporary server
    assert not (tmp_path / "raw").exists() and not (tmp_path / "processed").exists()  # nothing fetched or written
