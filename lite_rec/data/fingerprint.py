"""Content fingerprints and the manifest that let an unchanged data stage be skipped.

Why content and not timestamps: a re-run must skip exactly when its result would be the same
bytes. That result is a function of (1) the raw files' content (``RawFiles.fingerprint``, a
sha256 computed by :mod:`lite_rec.data.sources`), (2) the data-relevant config, (3) the SQL and
Python code of the stage and the DuckDB version that runs it. ``manifest.json`` stores those
three plus the sha256 of every output file; a re-run skips when the inputs match and every
output still hashes to what was recorded (so a hand-edited or truncated output is rebuilt).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import duckdb

from lite_rec.core.config import DataConfig, resource_dir
from lite_rec.core.io import sha256_file, write_json

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
SQL_DIR = resource_dir("sql")
# Modules whose code decides the bytes of the outputs (sources.py only fetches: its result is
# covered by the raw fingerprint).
STAGE_MODULES = ("data/readers.py", "data/transform.py", "data/validation.py", "data/ingest.py", "data/fingerprint.py")
# DataConfig fields that do not change the outputs: the item text is rendered by a later stage,
# DuckDB resources change speed, not results, and `source` says where the bytes came from,
# which the raw fingerprint already covers by content.
NOT_DATA_RELEVANT = {"item_text_template", "duckdb_memory_limit", "duckdb_threads", "source", "min_title_fraction"}  # change no output
_CHUNK = 1 << 20


def _sha256_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def data_relevant_config(data: DataConfig) -> dict[str, Any]:
    """The part of the dataset config that changes the processed bytes, as JSON values."""
    return data.model_dump(mode="json", exclude=NOT_DATA_RELEVANT)


def code_files() -> dict[str, str]:
    """sha256 of every SQL file and stage module, by path as in the repository (``sql/x.sql``,
    ``lite_rec/x.py``): the same keys for a checkout and a wheel install."""
    lib = Path(__file__).resolve().parents[1]
    files = {f"sql/{p.name}": p for p in sorted(SQL_DIR.glob("*.sql"))}
    files.update({f"lite_rec/{name}": lib / name for name in STAGE_MODULES if (lib / name).exists()})
    return {key: sha256_file(p) for key, p in files.items()}


def stage_inputs(raw_fingerprint: str, data: DataConfig) -> dict[str, str]:
    """What the outputs are a function of; equal dicts mean equal outputs."""
    return {
        "raw_fingerprint": raw_fingerprint,
        "data_config_sha256": _sha256_json(data_relevant_config(data)),
        "code_sha256": _sha256_json(code_files()),
        "duckdb_version": duckdb.__version__,
    }


def output_hashes(directory: Path, names: list[str]) -> dict[str, str]:
    return {name: sha256_file(directory / name) for name in names}


def build_manifest(
    directory: Path, inputs: dict[str, str], data: DataConfig, outputs: list[str], raw_origin: str
) -> dict[str, Any]:
    """The manifest of a finished (validated) output directory; no timestamps, so re-runs match."""
    return {
        "manifest_version": MANIFEST_VERSION,
        "dataset": data.name,
        "inputs": inputs,
        "raw_origin": raw_origin,
        "data_config": data_relevant_config(data),
        "code_files": code_files(),
        "outputs": output_hashes(directory, outputs),
    }


def write_manifest(directory: Path, manifest: dict[str, Any]) -> Path:
    return write_json(directory / MANIFEST, manifest)


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest in `directory`, or None when it is missing or unreadable (= not up to date)."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def is_up_to_date(directory: Path, inputs: dict[str, str]) -> bool:
    """True when `directory` was built from `inputs` and its outputs are intact."""
    manifest = read_manifest(directory)
    if manifest is None or manifest.get("manifest_version") != MANIFEST_VERSION or manifest.get("inputs") != inputs:
        return False
    recorded = manifest.get("outputs") or {}
    if not recorded:
        return False
    for name, digest in recorded.items():
        path = directory / name
        if not path.is_file() or sha256_file(path) != digest:
            return False
    return True
