"""Data-parallel training: each rank's shard of the global batches, the launch line, and a real
two-process gloo run through both stages with the EMA (rank 0's) on a tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.torch import save_file

from lite_rec.core.config import REPO_ROOT
from lite_rec.core.errors import ConfigError
from lite_rec.pipeline.steps import NPROC_ENV, nproc_from_env
from lite_rec.train.distributed import SINGLE, Ranks, rank_batch, rank_seed, shard_order, torchrun_command
from tests.unit.train.test_run import tiny_overrides, tiny_sequences, tiny_vectors


def _global_batches(order: np.ndarray, batch: int) -> list[list[int]]:
    return [sorted(order[i:i + batch].tolist()) for i in range(0, len(order), batch)]


@pytest.mark.parametrize(("samples", "world"), [(40, 2), (37, 2), (37, 4), (33, 4), (8, 4)])
def test_the_ranks_batch_k_together_are_one_process_batch_k(samples: int, world: int) -> None:
    order = np.random.default_rng(samples).permutation(samples)
    shards = [shard_order(order, 8, Ranks(r, world, r)) for r in range(world)]
    per = 8 // world
    steps = [-(-len(s) // per) for s in shards]
    assert steps == [-(-samples // 8)] * world  # every rank takes every global step
    for k, want in enumerate(_global_batches(order, 8)):
        got = sorted({i for s in shards for i in s[k * per:(k + 1) * per].tolist()})
        assert got == want, k
    full = samples // 8 * 8
    assert sorted(np.concatenate([s[:full // world] for s in shards]).tolist()) == sorted(order[:full].tolist())  # no repeats


def test_a_short_last_batch_repeats_a_sample_only_where_a_rank_would_have_none() -> None:
    order = np.arange(9)  # one full batch of 8, then one sample for 4 ranks
    tails = [shard_order(order, 8, Ranks(r, 4, r))[2:].tolist() for r in range(4)]
    assert tails == [[8], [8], [8], [8]]
    tails = [shard_order(np.arange(11), 8, Ranks(r, 2, r))[4:].tolist() for r in range(2)]
    assert tails == [[8, 9], [10]]


def test_one_process_keeps_the_order_and_the_global_batch_must_split_evenly() -> None:
    order = np.arange(5)
    assert shard_order(order, 4, SINGLE) is order
    assert rank_batch(256, Ranks(1, 4, 1)) == 64 and rank_batch(7, SINGLE) == 7
    with pytest.raises(ConfigError, match=r"train.batch_size=100 is the global batch .* multiple of .* \(3\)"):
        rank_batch(100, Ranks(0, 3, 0))


def test_rank_seeds_differ_and_rank_0_keeps_the_runs_seed() -> None:
    assert rank_seed(7, 0) == 7
    assert len({rank_seed(7, r) for r in range(8)}) == 8 and rank_seed(7, 1) != rank_seed(8, 1)


def test_the_launch_line_is_torchrun_of_the_training_entry_point() -> None:
    cmd = torchrun_command(4, ["--out", "x"], master_port=1234, python="py")
    assert cmd == ["py", "-m", "torch.distributed.run", "--nproc-per-node", "4", "--nnodes", "1", "--master-addr",
                   "127.0.0.1", "--master-port", "1234", "-m", "lite_rec.train.run", "--out", "x"]


def test_the_number_of_processes_comes_from_the_parameter_then_the_job_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(NPROC_ENV, raising=False)
    assert nproc_from_env() == 1
    monkeypatch.setenv(NPROC_ENV, "4")
    assert nproc_from_env() == 4 and nproc_from_env(2) == 2
    monkeypatch.setenv(NPROC_ENV, "four")
    with pytest.raises(ConfigError, match=NPROC_ENV):
        nproc_from_env()
    with pytest.raises(ConfigError, match="at least one"):
        nproc_from_env(0)
    with pytest.raises(ConfigError, match=r"train.batch_size=100 .* \(3\)"):
        nproc_from_env(3, batch_size=100)  # the flow checks it before ingest, embedding and torchrun


def test_two_gloo_ranks_train_both_stages_with_rank_0s_ema(tmp_path: Path) -> None:
    """Text vectors, ``all`` (one target per sample), EMA and a stage 2 that makes the item vectors
    trainable (DDP re-registers the parameters): the run finishes, and rank 0 alone writes the
    model and prints the summary."""
    processed = tmp_path / "processed" / "ml-100k"
    processed.mkdir(parents=True)
    schema = pa.schema([("user_idx", pa.int32()), ("user_id", pa.string()), ("train_seq", pa.list_(pa.int32())),
                        ("valid_item_idx", pa.int32()), ("test_item_idx", pa.int32())])
    pq.write_table(pa.Table.from_pandas(tiny_sequences(), schema=schema, preserve_index=False),
                   processed / "sequences.parquet")
    save_file({"vectors": tiny_vectors()}, str(tmp_path / "vectors.safetensors"))
    overrides = tiny_overrides(**{"train.strategy": "all", "train.ema_decay": 0.9, "train.finetune_epochs": 1})
    args = ["--processed-dir", str(processed), "--item-vectors", str(tmp_path / "vectors.safetensors"),
            "--out", str(tmp_path / "run"), "--profile", "smoke", "--no-progress", *overrides]
    cmd = torchrun_command(2, args, python=sys.executable)
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)  # one JSON document: rank 1 printed nothing
    assert summary["resumed"] is False and summary["epochs_run"] == 3.0
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [(h["stage"], h["epoch"]) for h in history] == [(1, 1), (1, 2), (2, 1)]
    state = json.loads((tmp_path / "run" / "checkpoints" / "resume.json").read_text())
    assert state["done"] and state["world_size"] == 2
    # the same global steps as one process: 146 training targets of `all`, 19 global batches of 8
    assert [h["steps"] for h in history] == [19, 19, 19]
