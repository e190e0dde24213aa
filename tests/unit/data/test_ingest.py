"""The whole data stage on tiny ML-1m-format files: outputs, skip/force, and failure isolation."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from lite_rec.core.config import LiteRecConfig, build_config
from lite_rec.core.errors import DataError, LiteRecError, ValidationFailed
from lite_rec.data.ingest import ingest
from tests.helpers.raw_files import write_ml1m

T0 = 978_300_760
# users 1..4 rate items 10..40 (a 4x4 core); user 5 rates only two items and is dropped at k=3.
RATINGS = [(str(u), str(i), 4.0, T0 + 10 * n) for n, (u, i) in enumerate((u, i) for u in (1, 2, 3, 4) for i in (10, 20, 30, 40))]
RATINGS += [("5", "10", 3.0, T0), ("5", "20", 3.0, T0 + 1)]
MOVIES = [(str(i), f"Movie {i} (1999)", ["Drama"]) for i in (10, 20, 30, 40)]


def make_config(tmp_path: Path, *overrides: str) -> LiteRecConfig:
    return build_config(
        "ml-1m", [f"data_dir={tmp_path / 'data'}", f"dataset.source.path={tmp_path / 'src'}", "dataset.k_core=3", *overrides]
    )


def digests(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.is_file() and p.suffix in {".parquet", ".json"}
    }


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Raw files and one good ingest, built once; tests copy them (the manifest is path-free)."""
    root = tmp_path_factory.mktemp("baseline")
    write_ml1m(root / "src", RATINGS, MOVIES)
    ingest(make_config(root), progress=False)
    return root


@pytest.fixture
def cfg(tmp_path: Path, baseline: Path) -> LiteRecConfig:
    """A config whose data_dir already holds good outputs of RATINGS (copied from `baseline`)."""
    shutil.copytree(baseline / "src", tmp_path / "src")
    shutil.copytree(baseline / "data", tmp_path / "data")
    return make_config(tmp_path)


def test_ingest_writes_validated_outputs(tmp_path: Path) -> None:
    write_ml1m(tmp_path / "src", RATINGS, MOVIES)
    cfg = make_config(tmp_path)
    result = ingest(cfg, progress=False)
    out = cfg.processed_dir
    assert not result.skipped and result.processed_dir == out
    assert (result.stats["users"], result.stats["items"], result.stats["interactions"]) == (4, 4, 16)
    assert result.stats["raw_interactions"] == 18 and result.stats["k_core_iterations"] == 1
    assert sorted(p.name for p in out.iterdir()) == [
        "interactions.parquet", "item_map.parquet", "items.parquet", "manifest.json", "sequences.parquet",
        "stats.json", "user_map.parquet", "validation",
    ]  # fmt: skip
    assert sorted(result.validation) == ["processed_items", "processed_users", "raw_interactions", "raw_items"]
    assert all(json.loads(p.read_text())["success"] for p in result.validation.values())
    assert json.loads((out / "stats.json").read_text()) == result.stats
    seq = pq.read_table(out / "sequences.parquet").to_pylist()
    assert [len(s["train_seq"]) for s in seq] == [2, 2, 2, 2]
    assert pq.read_table(out / "items.parquet").column("title").to_pylist()[0] == "Movie 10 (1999)"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["outputs"] == {k: v for k, v in digests(out).items() if k not in {"manifest.json"}}
    assert not any(p.name.startswith(f".{cfg.dataset.name}.") and p.is_dir() for p in out.parent.iterdir())


def test_rerun_skips_and_force_rebuilds_identical_bytes(cfg: LiteRecConfig) -> None:
    before = digests(cfg.processed_dir)
    manifest = json.loads((cfg.processed_dir / "manifest.json").read_text())
    mtime = (cfg.processed_dir / "interactions.parquet").stat().st_mtime_ns
    again = ingest(cfg, progress=False)
    assert again.skipped and again.stats["interactions"] == 16
    assert (cfg.processed_dir / "interactions.parquet").stat().st_mtime_ns == mtime
    forced = ingest(cfg, progress=False, force=True)
    assert not forced.skipped
    assert (cfg.processed_dir / "interactions.parquet").stat().st_mtime_ns != mtime
    after = digests(cfg.processed_dir)
    after.pop("manifest.json"), before.pop("manifest.json")  # its raw_origin names the (copied) path
    assert after == before  # byte-identical Parquet and stats
    assert forced.manifest["inputs"] == manifest["inputs"] and forced.manifest["outputs"] == manifest["outputs"]


def test_changed_config_or_damaged_output_reruns(cfg: LiteRecConfig, tmp_path: Path) -> None:
    assert ingest(cfg, progress=False).skipped
    # a change that does not touch the outputs (item text is a later stage) still skips
    assert ingest(make_config(tmp_path, "dataset.item_text_template='Movie {title}'"), progress=False).skipped
    lowered = ingest(make_config(tmp_path, "dataset.k_core=2"), progress=False)
    assert not lowered.skipped and lowered.stats["protocol"]["k_core"] == 2
    (cfg.processed_dir / "sequences.parquet").write_bytes(b"damaged")
    assert not ingest(make_config(tmp_path, "dataset.k_core=2"), progress=False).skipped


def test_failed_validation_keeps_previous_outputs(cfg: LiteRecConfig, tmp_path: Path) -> None:
    before = digests(cfg.processed_dir)
    bad = [*RATINGS[:3], ("1", "40", 55.0, T0 + 30), *RATINGS[4:]]  # line 4: rating 55
    write_ml1m(tmp_path / "src", bad, MOVIES)
    with pytest.raises(ValidationFailed) as info:
        ingest(cfg, progress=False)
    report = cfg.processed_dir.parent / ".ml-1m.incomplete" / "validation" / "raw_interactions.json"
    message = str(info.value)
    assert str(report) in message
    assert "observed max_rating=55.0; 1 raw rows fail on field 'rating'" in message and "row_no=3 (rating=55.0)" in message
    assert json.loads(report.read_text())["success"] is False
    assert digests(cfg.processed_dir) == before


def test_a_truncated_raw_file_is_named_in_the_error(cfg: LiteRecConfig, tmp_path: Path) -> None:
    """A download cut off inside the last timestamp: every column parses, the raw suite fails on the
    1970 time, and the error names the file as well as the rule it broke."""
    ratings = tmp_path / "src" / "ratings.dat"
    text = ratings.read_text(encoding="utf-8").rstrip("\n")
    ratings.write_text(text[: text.rindex("::") + 4], encoding="utf-8")  # the last timestamp keeps 2 digits
    with pytest.raises(ValidationFailed, match=r"observed min_ts=97;") as info:
        ingest(cfg, progress=False)
    assert f"validation suite 'raw_interactions' of {ratings} failed" in str(info.value), str(info.value)


def test_kcore_that_empties_the_data_keeps_previous_outputs(cfg: LiteRecConfig, tmp_path: Path) -> None:
    before = digests(cfg.processed_dir)
    with pytest.raises(DataError, match=r"k_core=9.*left 0 interactions out of 18"):
        ingest(make_config(tmp_path, "dataset.k_core=9"), progress=False)
    assert digests(cfg.processed_dir) == before


def test_interrupted_swap_is_recovered(cfg: LiteRecConfig) -> None:
    before = digests(cfg.processed_dir)
    previous = cfg.processed_dir.parent / ".ml-1m.previous"
    os.replace(cfg.processed_dir, previous)  # as if the process died between the two renames
    assert ingest(cfg, progress=False).skipped
    assert digests(cfg.processed_dir) == before and not previous.exists()


def test_concurrent_ingest_of_same_dataset_is_refused(cfg: LiteRecConfig) -> None:
    before = digests(cfg.processed_dir)
    with open(cfg.processed_dir.parent / ".ml-1m.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        with pytest.raises(LiteRecError, match=r"another ingest of ml-1m is running"):
            ingest(cfg, progress=False, force=True)
    assert digests(cfg.processed_dir) == before


def test_raw_suite_failure_is_reported_before_a_transform_error(cfg: LiteRecConfig, tmp_path: Path) -> None:
    """Timestamps from 1970 fail the raw suite; k_core=9 would also empty the data. The user
    sees the raw problem (the cause), not the k-core symptom."""
    write_ml1m(tmp_path / "src", [(u, i, r, 100 + n) for n, (u, i, r, _) in enumerate(RATINGS)], MOVIES)
    with pytest.raises(ValidationFailed, match=r"observed min_ts=100; 18 raw rows fail on field 'ts'") as info:
        ingest(make_config(tmp_path, "dataset.k_core=9"), progress=False)
    assert isinstance(info.value.__context__, DataError)
