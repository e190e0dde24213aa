"""The `score` flow: the champion's top-k for every user (or a user list) -> Parquet (DuckDB-readable).

`engine`: ``inprocess`` (the default: one process, one file) or ``ray`` (Ray Data over an actor
pool, a folder of part files with the same rows; `address` names a running Ray cluster, none
starts a local Ray). docs/scaling.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lite_rec_tasks.serving import fetch_model_task, score_users_task
from prefect import flow

from lite_rec.core.config import build_config
from lite_rec.core.errors import ConfigError
from lite_rec.serve.ray_scoring import ENGINES
from lite_rec.serve.scoring import ScoreResult, default_scores_path


@flow(name="score", log_prints=True)
def score_flow(
    dataset: str = "ml-1m",
    profile: str | None = None,
    overrides: dict[str, Any] | None = None,
    model: str | None = None,
    out: str | None = None,
    k: int = 20,
    user_ids: list[str] | None = None,
    engine: str = "inprocess",
    address: str | None = None,
) -> ScoreResult:
    cfg = build_config(dataset, overrides, profile=profile)  # validated before any work
    if engine not in ENGINES:
        raise ConfigError(f"engine={engine!r}: one of {', '.join(ENGINES)}")
    bundle = fetch_model_task(cfg, model or cfg.serve.model)
    result = score_users_task(cfg, bundle, Path(out) if out else default_scores_path(cfg), k, user_ids,
                              engine=engine, address=address)
    print(result.summary())
    return result
