"""The data stage end to end: raw dump -> validated Parquet sequences under processed/<dataset>/.

Why this order: ``fetch_raw`` -> ``load_raw`` -> summarise raw (DuckDB) -> transform and write
Parquet -> judge the raw summary (GX) -> validate what was written (GX) -> swap in. The raw
suite is judged after the transform only so that the ~5 s Great Expectations import (started
in a background thread at the beginning) overlaps DuckDB's work instead of adding to it; its
verdict still comes first: if the transform fails on bad data, the raw suites are judged and
their ValidationFailed is raised in place of the transform's DataError.

Everything is built in a work directory beside the final one (``processed/.<dataset>.incomplete``);
only a fully validated directory replaces the previous outputs, so bad input, a failed suite
or a crash never leaves half-new outputs behind.

Swapping a directory: POSIX ``rename`` cannot replace a non-empty directory, so the previous
outputs are first moved aside (``.<dataset>.previous``), the work directory is renamed into
place, and the previous one is deleted. Both renames are ``os.replace`` calls on one file
system; if the process dies between them, the next run moves the previous outputs back before
doing anything else.

Skipping: ``manifest.json`` records the raw fingerprint, the data-relevant config, the hash of
the SQL and stage code, and the hash of each output (lite_rec/data/fingerprint.py). When all match,
the stage returns at once with ``skipped=True`` unless ``force=True``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
from tqdm.auto import tqdm

from lite_rec.core.config import DataConfig, LiteRecConfig
from lite_rec.core.errors import DataError, LiteRecError
from lite_rec.core.io import write_json
from lite_rec.data.fingerprint import build_manifest, is_up_to_date, read_manifest, stage_inputs, write_manifest
from lite_rec.data.readers import load_raw
from lite_rec.data.sources import RawFiles, fetch_raw
from lite_rec.data.transform import OUTPUTS, transform
from lite_rec.data.validation import preload_gx, summarize_raw, validate_processed, validate_raw

log = logging.getLogger(__name__)

STATS = "stats.json"
VALIDATION_DIR = "validation"
HASHED_OUTPUTS = [*OUTPUTS, STATS]  # the files whose bytes a re-run must reproduce


@dataclass(frozen=True)
class IngestResult:
    """What one run of the data stage produced (or found already up to date)."""

    dataset: str
    processed_dir: Path  # <data_dir>/processed/<dataset>
    skipped: bool  # True: outputs were up to date and nothing ran
    stats: dict[str, Any]  # the content of stats.json
    manifest: dict[str, Any]  # the content of manifest.json
    validation: dict[str, Path] = field(default_factory=dict)  # suite name -> GX result JSON
    raw_origin: str = ""  # where the raw files came from (RawFiles.origin)
    seconds: float = 0.0  # wall time of this call, fetch included


def _siblings(final: Path) -> tuple[Path, Path, Path]:
    """(work dir, previous-outputs dir, DuckDB spill dir), all beside `final` on its file system."""
    parent, name = final.parent, final.name
    return parent / f".{name}.incomplete", parent / f".{name}.previous", parent / f".{name}.spill"


@contextmanager
def _exclusive(final: Path) -> Iterator[None]:
    """One ingest per dataset directory at a time (a second one fails fast, naming the lock)."""
    lock_path = final.parent / f".{final.name}.lock"
    with open(lock_path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LiteRecError(f"another ingest of {final.name} is running (lock {lock_path}); wait for it") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def recover_interrupted_swap(final: Path) -> None:
    """Undo a swap that died between its two renames; drop a leftover previous directory."""
    _, previous, _ = _siblings(final)
    if previous.exists() and not final.exists():
        log.warning("restoring %s from an interrupted swap (%s)", final, previous)
        os.replace(previous, final)
    elif previous.exists():
        shutil.rmtree(previous)


def swap_in(work: Path, final: Path) -> None:
    """Replace `final` by the validated `work` directory (see the module docstring)."""
    _, previous, _ = _siblings(final)
    if final.exists():
        os.replace(final, previous)
    os.replace(work, final)
    if previous.exists():
        shutil.rmtree(previous)


def connect(data: DataConfig, spill_dir: Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with bounded memory: beyond ``duckdb_memory_limit`` it spills to disk."""
    spill_dir.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "memory_limit": data.duckdb_memory_limit,
        "temp_directory": str(spill_dir),
        "preserve_insertion_order": True,
    }
    if data.duckdb_threads:
        config["threads"] = data.duckdb_threads
    return duckdb.connect(":memory:", config=config)


def _validation_files(directory: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted((directory / VALIDATION_DIR).glob("*.json"))}


def _build(
    con: duckdb.DuckDBPyConnection, raw: RawFiles, data: DataConfig, work: Path, bar: tqdm, progress: bool
) -> dict[str, Any]:
    """Load, transform and validate into `work`; return the stats. Raises on any failure."""
    checks = work / VALIDATION_DIR
    bar.set_postfix_str("load raw")
    load_raw(con, raw, data, progress=progress)
    raw_summary = summarize_raw(con, data)
    bar.update()
    bar.set_postfix_str("transform")
    try:
        result = transform(con, data, work, progress=False)  # one bar for the stage: its steps show as its postfix
    except DataError:
        validate_raw(raw_summary, data, checks, (raw.interactions, raw.items))  # a failed raw suite explains it better
        raise
    write_json(work / STATS, result.stats)
    bar.update()
    bar.set_postfix_str("validate raw")
    validate_raw(raw_summary, data, checks, (raw.interactions, raw.items))
    bar.update()
    bar.set_postfix_str("validate outputs")
    validate_processed(con, work, data, checks)
    bar.update()
    return result.stats


def ingest(
    cfg: LiteRecConfig, *, raw: RawFiles | None = None, progress: bool = True, force: bool = False
) -> IngestResult:
    """Run the data stage for ``cfg.dataset``; return what it wrote (or that it was up to date).

    `raw` skips the fetch (the Prefect flow fetches in its own retried task). Errors are
    :class:`~lite_rec.core.errors.LiteRecError` subclasses naming the file, line or field
    (DataError, ValidationFailed, DownloadError...); the previous outputs stay untouched and the
    work directory keeps the validation JSON of a failed suite until the next run.
    """
    started = time.perf_counter()
    data, final = cfg.dataset, cfg.processed_dir
    with tqdm(total=6, desc=f"ingest {data.name}", unit="step", disable=not progress) as bar:
        bar.set_postfix_str("fetch raw")
        raw = raw if raw is not None else fetch_raw(cfg, progress=progress)
        bar.update()
        final.parent.mkdir(parents=True, exist_ok=True)
        work, _, spill = _siblings(final)
        with _exclusive(final):
            recover_interrupted_swap(final)
            inputs = stage_inputs(raw.fingerprint, data)
            if not force and is_up_to_date(final, inputs):
                bar.update(bar.total - bar.n)
                log.info("%s: outputs in %s are up to date (manifest matches); skipped", data.name, final)
                stats = json.loads((final / STATS).read_text(encoding="utf-8"))
                return IngestResult(
                    data.name, final, True, stats, read_manifest(final) or {}, _validation_files(final),
                    raw.origin, time.perf_counter() - started,
                )  # fmt: skip
            preload_gx()  # overlaps the ~5 s import with DuckDB's work below
            if work.exists():
                shutil.rmtree(work)
            work.mkdir()
            con = connect(data, spill)
            try:
                stats = _build(con, raw, data, work, bar, progress)
            except duckdb.OutOfMemoryException as exc:
                raise LiteRecError(
                    f"{data.name}: DuckDB ran out of memory within dataset.duckdb_memory_limit="
                    f"{data.duckdb_memory_limit} and could not spill enough to {spill}; raise the limit "
                    f"or free disk space ({exc})"
                ) from exc
            finally:
                con.close()
                shutil.rmtree(spill, ignore_errors=True)
            bar.set_postfix_str("swap in")
            manifest = build_manifest(work, inputs, data, HASHED_OUTPUTS, raw.origin)
            write_manifest(work, manifest)
            swap_in(work, final)
            bar.update()
    log.info(
        "%s: %d users, %d items, %d interactions (k-core %d in %d passes) -> %s",
        data.name, stats["users"], stats["items"], stats["interactions"], data.k_core, stats["k_core_iterations"], final,
    )  # fmt: skip
    return IngestResult(
        data.name, final, False, stats, manifest, _validation_files(final), raw.origin, time.perf_counter() - started
    )
