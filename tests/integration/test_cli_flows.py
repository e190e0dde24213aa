"""`lite-rec train` and `lite-rec ingest --prefect` on real ml-100k: the CLI's flags reach the flows.

The CLI runs use the run's one Prefect server (tests/conftest.py ``prefect_api``), as a user's
own server (``PREFECT_API_URL``): each run then skips starting a temporary one (~25 s each). The
temporary server's own path is covered by the kill -9 test below and by the wheel test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lite_rec.core.config import REPO_ROOT, LiteRecConfig

BAR = "%|"  # what every tqdm bar prints, ours and third-party ones


def _cli(data_dir: Path, *args: str, api_url: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_HOME": str(data_dir / "prefect-home"), "PREFECT_API_URL": api_url}
    cmd = [sys.executable, "-m", "lite_rec_flows.cli", *args, "--data-dir", str(data_dir)]
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)


# id-only items and one epoch: every stage and bar of the flow runs, without a minute of text encoding
FAST = ("--set", "model.item_repr=id", "--set", "train.max_epochs=1")


def _train(data_dir: Path, *flags: str, api_url: str) -> subprocess.CompletedProcess:
    return _cli(data_dir, "train", "ml-100k", "--profile", "smoke", "--no-register", *FAST, *flags, api_url=api_url)


def test_no_progress_silences_every_bar_of_the_train_flow(tmp_path: Path, ml100k_config: LiteRecConfig,
                                                          prefect_api: str) -> None:
    (tmp_path / "raw").symlink_to(ml100k_config.data_dir / "raw")  # the downloaded dump, not the outputs
    quiet = _train(tmp_path, "--no-progress", api_url=prefect_api)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    table = quiet.stdout.split("metrics (test)")[1].split("model folder")[0].splitlines()
    assert table[0].split()[:2] == ["masked", "unmasked"] and [r.split()[0] for r in table[1:5]] == \
        ["recall_10", "recall_20", "ndcg_10", "ndcg_20"]  # both protocols, one row per metric
    assert "history score" not in quiet.stdout  # only for models with model.history_logit
    assert BAR not in quiet.stderr + quiet.stdout  # ingest, item encoding, weights loading, training, evaluation
    # the same run again with bars: the finished model is reloaded and re-evaluated, and the bars show
    loud = _train(tmp_path, api_url=prefect_api)
    assert loud.returncode == 0, loud.stderr[-3000:]
    assert "eval test" in loud.stderr and BAR in loud.stderr
    # quiet by default: our bars and the summary, no third-party INFO lines (Great Expectations,
    # httpx, MLflow, Prefect); every bar redraws in place, so the whole output stays short
    lines = (loud.stdout + loud.stderr).splitlines()
    assert len(lines) < 60, "\n".join(lines)
    assert not [line for line in lines if " INFO " in line and " lite_rec." not in line], "\n".join(lines)
    assert loud.stdout.split("metrics (test")[1].split("model folder")[0] == \
        quiet.stdout.split("metrics (test")[1].split("model folder")[0]  # bars never change a result


def test_ingest_through_prefect_honours_force_and_no_progress(tmp_path: Path, ml100k_config: LiteRecConfig,
                                                             prefect_api: str) -> None:
    (tmp_path / "raw").symlink_to(ml100k_config.data_dir / "raw")
    runs = [_cli(tmp_path, "ingest", "ml-100k", "--prefect", "--no-progress", *flags, api_url=prefect_api)
            for flags in ([], [], ["--force"])]
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
        assert BAR not in run.stderr + run.stdout
    assert "written in" in runs[0].stdout and "up to date (skipped)" in runs[1].stdout
    assert "written in" in runs[2].stdout  # --force redoes the data stage through the flow too


def test_a_model_that_reads_the_input_context_trains_and_registers(tmp_path: Path, ml100k_config: LiteRecConfig,
                                                                   prefect_api: str) -> None:
    """Time gaps, ratings and the query time with its floor: no longer refused before the flow
    starts; the version registers with the request fields it reads on its tag and description."""
    from mlflow.tracking import MlflowClient

    (tmp_path / "raw").symlink_to(ml100k_config.data_dir / "raw")
    context = ("--set", "model.time_gaps=true", "--set", "model.ratings=true", "--set", "model.query_time=true",
               "--set", "model.query_gap_floor=3600")
    run = _cli(tmp_path, "train", "ml-100k", "--profile", "smoke", "--no-progress", *FAST, *context, api_url=prefect_api)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "registered model:  models:/lite-rec-ml100k/1 (aliases: challenger, champion)" in run.stdout, run.stdout
    uri = run.stdout.split("MLflow store:")[1].split()[0]
    version = MlflowClient(uri, registry_uri=uri).get_model_version("lite-rec-ml100k", "1")
    assert json.loads(version.tags["context_fields"]) == ["ts", "rating", "request_time"]
    assert "ts, rating, request_time" in version.description and version.tags["verified"] == "true"


def _descendants(pid: int) -> dict[int, str]:
    """pid -> command line of every process below `pid` (Linux /proc)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents.setdefault(int(stat.read_text().rsplit(")", 1)[1].split()[1]), []).append(int(stat.parent.name))
        except (OSError, ValueError):
            continue
    found, todo = {}, [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            try:
                found[child] = (Path("/proc") / str(child) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_kill_9_of_the_cli_takes_its_temporary_prefect_server_along(tmp_path: Path) -> None:
    """A SIGKILLed `lite-rec train` cannot clean up: its temporary Prefect server must die with it."""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    env.pop("PREFECT_API_URL", None)
    cmd = [sys.executable, "-m", "lite_rec_flows.cli", "train", "ml-100k", "--profile", "smoke", "--no-register",
           "--no-progress", *FAST, "--data-dir", str(tmp_path)]
    cli = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = None
    try:
        deadline = time.monotonic() + 180
        while server is None and time.monotonic() < deadline and cli.poll() is None:
            server = next((pid for pid, line in _descendants(cli.pid).items() if "prefect.server.api.server" in line), None)
            time.sleep(0.2)
        assert server is not None, "the CLI never started a Prefect server"
        os.kill(cli.pid, signal.SIGKILL)
        cli.wait(timeout=30)
        deadline = time.monotonic() + 15
        while _alive(server) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(server), f"Prefect server {server} outlived the killed CLI"
    finally:
        for pid in [cli.pid, *([server] if server else [])]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
