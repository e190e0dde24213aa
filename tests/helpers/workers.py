"""Sharing between pytest-xdist workers: one directory for the whole run, and a lock around work
that only one worker may do at a time (the first one does it, the others then find it done).

Why: every xdist worker runs the session fixtures on its own, with its own ``tmp_path_factory``
base (``.../pytest-N/popen-gwK``). What is worth doing once per run (the real ml-100k / ml-1m
download and data stage) goes to a folder beside those bases instead, under a file lock.
Without xdist both are the plain single-process behaviour.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def worker_id() -> str:
    """``"gw0"``, ``"gw1"``, ... under pytest-xdist, ``"master"`` without it."""
    return os.environ.get("PYTEST_XDIST_WORKER", "master")


def shared_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """``<run's temp base>/<name>``, the same folder for every worker of this run (created)."""
    base = tmp_path_factory.getbasetemp()
    if worker_id() != "master":
        base = base.parent  # the workers' bases are popen-gw0, popen-gw1, ... in one run folder
    path = base / name
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on `path` (created) for the block; released if the holder dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
