"""`lite-rec train` end to end on real ml-100k (the embedded default: Prefect in-process, no servers)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lite_rec.config import REPO_ROOT, LiteRecConfig

BAR = "%|"  # what every tqdm bar prints, ours and third-party ones


def _train(data_dir: Path, *flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_HOME": str(data_dir / "prefect-home")}
    cmd = [sys.executable, "-m", "flows.cli", "train", "ml-100k", "--profile", "smoke", "--no-register",
           "--data-dir", str(data_dir), *flags]
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_no_progress_silences_every_bar_of_the_train_flow(tmp_path: Path, ml100k_config: LiteRecConfig) -> None:
    (tmp_path / "raw").symlink_to(ml100k_config.data_dir / "raw")  # the downloaded dump, not the outputs
    quiet = _train(tmp_path, "--no-progress")
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert "test_ndcg_10" in quiet.stdout
    assert BAR not in quiet.stderr + quiet.stdout  # ingest, item encoding, weights loading, training, evaluation
    # the same run again with bars: the finished model is reloaded and re-evaluated, and the bars show
    loud = _train(tmp_path)
    assert loud.returncode == 0, loud.stderr[-3000:]
    assert "eval test" in loud.stderr and BAR in loud.stderr
    assert loud.stdout.split("metrics (test")[1].split("model folder")[0] == \
        quiet.stdout.split("metrics (test")[1].split("model folder")[0]  # bars never change a result
