"""File hashing and crash-safe writes, shared by every stage.

Why one module: data manifests, item-vector caches, checkpoints, bundles and scored tables all
promise the same two things. A file is identified by the sha256 of its bytes (read in chunks, so
a multi-GB Parquet never sits in memory), and a file a reader can open is never half-written:
it is written to a temporary sibling in the same directory and renamed into place with
``os.replace``, which is atomic on one file system. A crash leaves the previous file (or none),
plus at most a ``.tmp`` sibling that the next write replaces.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "sha256_file", "write_json", "write_text"]

CHUNK_BYTES = 1 << 20


def sha256_file(path: Path | str, chunk_bytes: int = CHUNK_BYTES) -> str:
    """Hex sha256 of a file's bytes, read `chunk_bytes` at a time."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write(path: Path | str, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp)`` on a temporary sibling of `path`, then rename it onto `path`.

    On any failure the temporary file is removed and `path` keeps its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text(path: Path | str, text: str) -> Path:
    """Write UTF-8 `text` to `path` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(path: Path | str, data: Any) -> Path:
    """Write `data` as indented, key-sorted JSON to `path` atomically."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
