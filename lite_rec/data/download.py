"""Fetch one URL into a local cache file, verified, never leaving a half-written file behind.

Why this shape: raw dumps are large and come over networks that break. A download streams into
``<dest>.part`` (hashing as it goes), is checked against the expected size and checksum, and
only then is renamed onto ``dest`` with ``os.replace`` -- so ``dest`` is always either absent, an
earlier good copy, or the new good copy. An existing ``dest`` whose checksum matches is the
cache: it is not downloaded again.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from lite_rec.core.errors import ChecksumError, DownloadError

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20  # read/hash granularity: 1 MiB
SUPPORTED_ALGORITHMS = ("sha256", "md5")


def parse_checksum(checksum: str) -> tuple[str, str]:
    """``"sha256:<hex>"`` -> ``("sha256", "<hex>")``; the config validates the form already."""
    algo, _, hexdigest = checksum.partition(":")
    if algo not in SUPPORTED_ALGORITHMS or not hexdigest:
        raise ValueError(f"checksum {checksum!r} must look like 'sha256:<hex>' or 'md5:<hex>'")
    return algo, hexdigest.lower()


def file_digest(path: Path, algo: str = "sha256") -> str:
    """Hex digest of a file's content, read in chunks so that a multi-GB dump needs no memory."""
    h = hashlib.new(algo)
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


def verify_checksum(path: Path, checksum: str, *, what: str | None = None) -> None:
    """Raise :class:`ChecksumError` (expected vs got) when `path` does not match `checksum`."""
    algo, expected = parse_checksum(checksum)
    got = file_digest(path, algo)
    if got != expected:
        raise ChecksumError(f"{what or path}: checksum mismatch: expected {algo}:{expected}, got {algo}:{got}")


def _is_cached(dest: Path, checksum: str | None) -> bool:
    if not dest.is_file():
        return False
    if checksum is None:
        return True
    try:
        verify_checksum(dest, checksum)
    except ChecksumError as exc:
        log.warning("cached %s does not match its checksum (%s); downloading it again", dest, exc)
        return False
    return True


def _open(url: str, timeout: float) -> http.client.HTTPResponse:
    request = urllib.request.Request(url, headers={"User-Agent": "lite-rec"})
    try:
        return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - URLs come from config
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise DownloadError(f"{url}: unreachable ({exc.reason})") from exc
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise DownloadError(f"{url}: unreachable ({type(exc).__name__}: {exc})") from exc


def _stream(url: str, response: http.client.HTTPResponse, part: Path, algo: str, progress: bool) -> str:
    """Copy the response body into `part`; returns the hex digest. Checks the byte count."""
    length = response.headers.get("Content-Length")
    total = int(length) if length and length.isdigit() else None
    h = hashlib.new(algo)
    received = 0
    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=part.name[:-5], disable=not progress)
    try:
        with open(part, "wb") as out:
            while True:
                try:
                    chunk = response.read(CHUNK_BYTES)
                except (OSError, socket.timeout, http.client.HTTPException) as exc:
                    expected = f" of {total}" if total is not None else ""
                    raise DownloadError(
                        f"{url}: connection broke after {received}{expected} bytes ({type(exc).__name__}: {exc})"
                    ) from exc
                if not chunk:
                    break
                out.write(chunk)
                h.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    finally:
        bar.close()
        response.close()
    if total is not None and received != total:
        raise DownloadError(f"{url}: cut off midway: received {received} of {total} bytes")
    if received == 0:
        raise DownloadError(f"{url}: the server sent an empty body (0 bytes)")
    return h.hexdigest()


def download(url: str, dest: Path, *, checksum: str | None, progress: bool = True, timeout: float = 30) -> Path:
    """Download `url` to `dest` (cached, checksum-verified, atomic) and return `dest`.

    `checksum` is ``"sha256:<hex>"`` / ``"md5:<hex>"`` or None (unchecked: then any existing
    `dest` counts as cached). `timeout` (seconds) bounds connecting and every single read, so a
    stalled server fails instead of hanging. On any failure `dest` is left as it was and the
    partial ``.part`` file is removed.

    Raises :class:`DownloadError` (unreachable, HTTP status, cut off: names the URL and the
    bytes received) or :class:`ChecksumError` (expected vs got).
    """
    dest = Path(dest)
    if _is_cached(dest, checksum):
        log.info("using cached %s", dest)
        return dest
    algo, expected = parse_checksum(checksum) if checksum else ("sha256", None)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(dest.suffix + ".part")
    log.info("downloading %s -> %s", url, dest)
    response = _open(url, timeout)
    try:
        got = _stream(url, response, part, algo, progress)
        if expected is not None and got != expected:
            raise ChecksumError(f"{url}: checksum mismatch: expected {algo}:{expected}, got {algo}:{got}")
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    return dest
