"""Batch scoring on Ray: `lite-rec score --engine ray --address ...` against a local Ray (2 CPUs on
127.0.0.1) writes the same top-k as the in-process scorer for every ml-100k user."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from lite_rec.core.config import REPO_ROOT, LiteRecConfig, build_config
from lite_rec.data.sequences import read_sequences
from lite_rec.serve.ray_scoring import RayPool, ray_pool
from lite_rec.serve.scoring import SCORES_SCHEMA, score_users
from lite_rec.train.export import build_bundle
from lite_rec.train.run import train_model

pytestmark = pytest.mark.integration

SETTINGS = ["model.item_repr=id", "model.backbone=lean", "model.dropout=0.1", "train.max_epochs=1", "train.device=cpu",
            "train.num_threads=1", "train.batch_size=128"]


@pytest.fixture(scope="module")
def bundle(ml100k_config: LiteRecConfig, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained ml-100k model (one epoch): scores far apart enough that ties do not decide the order."""
    root = tmp_path_factory.mktemp("ray-bundle")
    cfg = build_config("ml-100k", [f"data_dir={ml100k_config.data_dir}", *SETTINGS], profile="smoke")
    train_model(cfg, read_sequences(cfg.processed_dir / "sequences.parquet"), None, root / "run", progress=False)
    return build_bundle(cfg, root / "run", root / "bundle")


@pytest.fixture
def local_ray() -> Iterator[str]:
    """A local Ray of 2 CPUs on loopback; its address for a driver in another process."""
    import ray

    # no idle workers started ahead of the work (on raylet start, for the first driver): each is a
    # Python process importing Ray (~3 CPU-seconds); the job starts the ones it uses (13 -> 10 here)
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="WARNING",
             _system_config={"enable_worker_prestart": False, "prestart_worker_first_driver": False})
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def test_score_engine_ray_writes_the_in_process_top_k(bundle: Path, ml100k_config: LiteRecConfig, tmp_path: Path,
                                                      local_ray: str, prefect_api: str) -> None:
    data = tmp_path / "data"
    (data / "processed").mkdir(parents=True)
    (data / "processed" / "ml-100k").symlink_to(ml100k_config.processed_dir.resolve())
    cfg = build_config("ml-100k", [f"data_dir={data}"])
    want = score_users(bundle, cfg, tmp_path / "inprocess.parquet", k=10, device="cpu", progress=False)

    out = tmp_path / "ray-topk"
    # the run's Prefect server (a user's own server): no temporary one started for this one flow run
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": prefect_api}
    cmd = [sys.executable, "-m", "lite_rec_flows.cli", "score", "ml-100k", "--data-dir", str(data), "--model", str(bundle),
           "--engine", "ray", "--address", local_ray, "--out", str(out), "-k", "10", "--set", "serve.device=cpu",
           "--no-progress"]
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # the 2-CPU pool, and both of its actors scored batches
    assert "2 cpu actors (0.50 CPU each) scored 943 users; 2 of them got batches" in done.stderr, done.stderr[-3000:]
    assert f"users=943, rows={want.rows}, fallback_users=0" in done.stdout  # the flow's ScoreResult

    parts = sorted(out.glob("*.parquet"))
    assert out.is_dir() and parts and not list(tmp_path.glob(".ray-topk*"))  # swapped into place, no staging left
    got = pq.read_table(out)
    assert got.schema.remove_metadata() == SCORES_SCHEMA  # user_id, rank, item_id, score
    got, expected = got.to_pandas(), pd.read_parquet(tmp_path / "inprocess.parquet")
    assert want.users == 943 and len(got) == len(expected) == 9430
    # same users in the same order, same items at the same ranks; scores to float rounding
    pd.testing.assert_frame_equal(got[["user_id", "rank", "item_id"]], expected[["user_id", "rank", "item_id"]])
    assert (got["score"] - expected["score"]).abs().max() <= 1e-6


def test_the_pool_leaves_a_cpu_to_reads_and_writes_and_takes_one_gpu_per_actor() -> None:
    assert ray_pool({"CPU": 2.0}) == RayPool(2, 0.5, 0.0, "cpu", 1)
    assert ray_pool({"CPU": 64.0}, threads=4) == RayPool(16, 3.938, 0.0, "cpu", 4)
    assert ray_pool({"CPU": 32.0, "GPU": 4.0}) == RayPool(4, 1.0, 1.0, "cuda", 1)
    assert ray_pool({"CPU": 32.0, "GPU": 4.0}, actors=16) == RayPool(16, 1.0, 0.25, "cuda", 1)  # 4 actors a GPU
    assert ray_pool({"CPU": 32.0, "GPU": 4.0}, device="cpu").device == "cpu"
    assert ray_pool({"CPU": 2.0}, actors=1) == RayPool(1, 1.0, 0.0, "cpu", 1)


def test_an_unknown_engine_fails_before_any_work(tmp_path: Path) -> None:
    from lite_rec_flows.score import score_flow

    from lite_rec.core.errors import ConfigError

    with pytest.raises(ConfigError, match="engine='spark': one of inprocess, ray"):
        score_flow.fn(dataset="ml-100k", overrides={"data_dir": str(tmp_path)}, engine="spark")
    assert list(tmp_path.iterdir()) == []
