"""A real training process killed mid-epoch resumes to the result of an uninterrupted run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.torch import load_file, save_file

from lite_rec.core.config import REPO_ROOT, build_config
from lite_rec.data.sequences import read_sequences
from lite_rec.train.run import read_item_vectors, train_model
from tests.unit.train.test_run import tiny_overrides, tiny_sequences, tiny_vectors

pytestmark = pytest.mark.integration


def _write_inputs(root: Path) -> tuple[Path, Path]:
    processed = root / "processed" / "ml-100k"
    processed.mkdir(parents=True)
    frame = tiny_sequences(users=40)
    schema = pa.schema([("user_idx", pa.int32()), ("user_id", pa.string()), ("train_seq", pa.list_(pa.int32())),
                        ("valid_item_idx", pa.int32()), ("test_item_idx", pa.int32())])
    pq.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False), processed / "sequences.parquet")
    vectors = root / "vectors.safetensors"
    save_file({"vectors": tiny_vectors()}, str(vectors))
    return processed, vectors


def _wait_for_mid_epoch_checkpoint(summary: Path, proc: subprocess.Popen, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "training finished before it could be interrupted"
        if summary.exists():
            state = json.loads(summary.read_text())
            if state["stage"] == 1 and state["epoch"] >= 1 and state["step"] > 0:
                return state
        time.sleep(0.01)
    raise AssertionError("no mid-epoch checkpoint appeared")


def test_killed_training_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    processed, vectors = _write_inputs(tmp_path)
    overrides = tiny_overrides(**{"train.strategy": "all", "train.max_epochs": 3, "train.checkpoint_every_steps": 4,
                                  "train.seed": 7, "train.finetune_epochs": 1, "model.dropout": 0.3})
    reference = train_model(build_config("ml-100k", overrides, profile="smoke"),
                            read_sequences(processed / "sequences.parquet"), read_item_vectors(vectors),
                            tmp_path / "reference", progress=False)

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "lite_rec.train.run", "--processed-dir", str(processed), "--item-vectors", str(vectors),
           "--out", str(run), "--profile", "smoke", "--no-progress", *overrides]
    with open(tmp_path / "killed.log", "wb") as log:
        proc = subprocess.Popen([*cmd, "--step-sleep", "0.03"], cwd=REPO_ROOT, stdout=log, stderr=log)
        try:
            killed_at = _wait_for_mid_epoch_checkpoint(run / "checkpoints" / "resume.json", proc)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert killed_at["step"] > 0 and not (run / "metrics.json").exists()

    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["resumed"] is True  # continued the checkpoint, did not start over
    assert re.search(r"resuming .* from its checkpoint: stage [12], epoch \d+, step \d+ \(global step \d+\)", done.stderr), \
        done.stderr[-2000:]  # and says from where

    metrics = json.loads((run / "metrics.json").read_text())
    for key, value in reference.metrics.items():
        if key != "train_seconds":
            assert metrics[key] == pytest.approx(value, abs=1e-5), key
    history = json.loads((run / "history.json").read_text())
    assert [(h["stage"], h["epoch"]) for h in history] == [(h["stage"], h["epoch"]) for h in reference.history]
    for got, want in zip(history, reference.history):
        assert got["loss"] == pytest.approx(want["loss"], abs=1e-5)
        assert got["valid_ndcg_10"] == pytest.approx(want["valid_ndcg_10"], abs=1e-5)
    resumed_weights = load_file(str(run / "model.safetensors"))
    reference_weights = load_file(str(tmp_path / "reference" / "model.safetensors"))
    assert resumed_weights.keys() == reference_weights.keys()
    for name, tensor in reference_weights.items():
        assert (resumed_weights[name] - tensor).abs().max().item() <= 1e-5, name
