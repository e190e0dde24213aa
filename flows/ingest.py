"""The `ingest` flow: raw dump -> validated Parquet sequences (runs in-process by default)."""

from __future__ import annotations

from typing import Any

from lite_rec_tasks.data import build_sequences_task, fetch_raw_task
from prefect import flow

from lite_rec.core.config import build_config
from lite_rec.data.ingest import IngestResult


@flow(name="ingest", log_prints=True)
def ingest_flow(
    dataset: str = "ml-1m",
    profile: str | None = None,
    overrides: dict[str, Any] | None = None,
    force: bool = False,
    progress: bool = True,
) -> IngestResult:
    cfg = build_config(dataset, overrides, profile=profile)  # validated before any work
    raw = fetch_raw_task(cfg, progress=progress)
    return build_sequences_task(cfg, raw, force=force, progress=progress)
