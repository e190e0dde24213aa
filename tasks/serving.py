"""Prefect tasks of the online stage: each one call into `lite_rec`; retries only on the download."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from lite_rec.core.config import LiteRecConfig
from lite_rec.infer.bundle import Bundle
from lite_rec.infer.fast_path import FastPathOptions
from lite_rec.serve.ray_scoring import score_users_ray
from lite_rec.serve.scoring import ScoreResult, resolve_model, score_users


# NO_CACHE: inputs and results hold model tensors; hashing them for a cache key would copy them
@task(name="fetch-model", retries=3, retry_delay_seconds=[5, 30, 120], cache_policy=NO_CACHE)
def fetch_model_task(cfg: LiteRecConfig, model: str | None = None) -> tuple[Bundle, str]:
    """The verified bundle of `model` (models:/ URI or bundle dir), default the registered champion."""
    return resolve_model(model or cfg)


@task(name="score-users", cache_policy=NO_CACHE)
def score_users_task(
    cfg: LiteRecConfig, model: tuple[Bundle, str], out_path: Path, k: int, user_ids: Sequence[str] | None = None,
    engine: str = "inprocess", address: str | None = None,
) -> ScoreResult:
    """Top-k of every user (or `user_ids`) of the processed data -> Parquet at `out_path`: in this
    process (a file), or on Ray (``engine="ray"``, a folder; `address` a running cluster, None a local Ray)."""
    s = cfg.serve
    options = FastPathOptions(bf16=s.bf16, cuda_graphs=s.cuda_graphs, batch_buckets=s.batch_buckets, length_buckets=s.length_buckets)
    common = {"k": k, "user_ids": user_ids, "exclude_history": cfg.eval.exclude_history, "device": s.device,
              "batch_size": s.score_batch_size, "options": options}
    if engine == "ray":
        return score_users_ray(model[0], cfg, out_path, address=address, **common)
    return score_users(model[0], cfg, out_path, **common)
