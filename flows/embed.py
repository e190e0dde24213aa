"""The `embed` flow: item texts -> cached item vectors (the item LLM, run once per catalogue change)."""

from __future__ import annotations

from typing import Any

from lite_rec_tasks.data import build_sequences_task, fetch_raw_task
from lite_rec_tasks.model import embed_task
from prefect import flow

from lite_rec.core.config import build_config


@flow(name="embed", log_prints=True)
def embed_flow(dataset: str = "ml-1m", profile: str | None = None, overrides: dict[str, Any] | None = None,
               progress: bool = True) -> list[int]:
    cfg = build_config(dataset, overrides, profile=profile)
    build_sequences_task(cfg, fetch_raw_task(cfg, progress=progress), progress=progress)
    vectors = embed_task(cfg, progress=progress)
    return [] if vectors is None else list(vectors.shape)
