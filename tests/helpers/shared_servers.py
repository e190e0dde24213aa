"""One MLflow server and one Prefect server for the whole test run, shared by every pytest-xdist
worker, each stopped by its PID (its process group) when the last worker that used it is done.

Why: each of these servers costs 15-25 CPU-seconds just to start (imports, database
migrations), on a 2-vCPU machine where the suite is CPU-bound. The modules that talk to them
keep apart by name instead of by server: each registers its own model into its own experiment
(``tracking.registered_model`` / ``tracking.experiment``), and the Prefect flow runs of one
module never look at another's.

How: the first worker that needs a server starts it under a file lock and writes its PID, URL
and user count to ``<run's temp base>/shared-<name>/state.json``; the other worker finds it
there and counts itself in. At the end of its session each worker counts itself out; the one
that leaves the count at zero stops the server. A worker that comes later starts a new one.
The server is started detached (no worker is its parent), so whichever worker stops it can
wait for its process group to be gone. Without xdist this is one process starting and
stopping its own servers.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.workers import file_lock, shared_dir

BIN = Path(sys.executable).parent  # the venv's console scripts (mlflow, prefect)

# Run by a short-lived python: starts the command in its own session and exits, so the server is
# re-parented to init and no worker has to reap it (a zombie child of one worker would look alive
# to the other). Prints the server's PID, which is also its process group id.
_LAUNCH = """
import json, subprocess, sys
cmd, log, env, cwd = json.loads(sys.argv[1])
with open(log, "ab") as out:
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                            start_new_session=True)
print(proc.pid)
"""


@dataclass(frozen=True)
class Server:
    pid: int  # also its process group id
    url: str
    log: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group `pgid`, read from /proc (Linux)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # state, ppid, pgrp, ...
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def stop_group(pgid: int, timeout_s: float = 20.0) -> None:
    """SIGTERM the process group `pgid`, SIGKILL what is left after `timeout_s`; returns once none lives."""
    for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not group_members(pgid):
            return
    raise AssertionError(f"process group {pgid} still has {group_members(pgid)} after SIGKILL")


def stop_process(proc: subprocess.Popen) -> None:
    """Stop a child started with ``start_new_session``/``process_group=0``: SIGTERM its process group,
    then SIGKILL it and every process it started (also one that left the group), and reap it."""
    from lite_rec.pipeline.stack import descendants

    pids = [proc.pid, *descendants(proc.pid)]
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # its own group: the group id is its PID
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=10)


def start_detached(cmd: list[str], log: Path, env: dict[str, str], health: str, timeout_s: float = 120.0,
                   cwd: Path | None = None) -> int:
    """Start `cmd` in its own session, no worker its parent; wait until `health` answers 200; its PID."""
    log.parent.mkdir(parents=True, exist_ok=True)
    spec = json.dumps([cmd, str(log), {**os.environ, **env}, str(cwd) if cwd else None])
    pid = int(subprocess.run([sys.executable, "-c", _LAUNCH, spec], capture_output=True, text=True, check=True).stdout)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            if not group_members(pid):
                raise AssertionError(f"{cmd[:3]} exited during start-up:\n{log.read_text(errors='replace')[-3000:]}")
            try:
                with urllib.request.urlopen(health, timeout=2) as resp:  # noqa: S310 (loopback only)
                    if resp.status == 200:
                        return pid
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{cmd[:3]} did not answer {health} in {timeout_s:.0f} s:\n"
                                     f"{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.3)
    except BaseException:
        stop_group(pid)
        raise


def start_mlflow_server(root: Path) -> Server:
    """``mlflow server`` on 127.0.0.1: sqlite backend, proxied artifacts under `root`, one worker."""
    port = free_port()
    cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts"),
           "--workers", "1"]
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # otherwise job-runner processes outlive the server
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    url = f"http://127.0.0.1:{port}"
    return Server(start_detached(cmd, root / "server.log", env, f"{url}/health", 90), url, root / "server.log")


def start_prefect_server(root: Path) -> Server:
    """``prefect server start`` on 127.0.0.1, its sqlite database and home under `root` (as
    ``lite_rec.pipeline.stack.start_prefect_server`` starts it); the URL is its API's."""
    port = free_port()
    env = {"PREFECT_HOME": str(root), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
           "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{root / 'prefect.db'}"}
    cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}/api"
    return Server(start_detached(cmd, root / "prefect-server.log", env, f"{url}/health", 120), url,
                  root / "prefect-server.log")


@contextmanager
def shared_server(tmp_path_factory: pytest.TempPathFactory, name: str, start: Callable[[Path], Server]) -> Iterator[Server]:
    """The run's one `name` server (started here if no worker has one running); counted out after the block."""
    base = shared_dir(tmp_path_factory, f"shared-{name}")
    state_file, lock = base / "state.json", base / ".lock"
    with file_lock(lock):
        state = json.loads(state_file.read_text()) if state_file.exists() else None
        if state is None or not group_members(state["pid"]):  # none yet, or it died (its tests fail on their own)
            server = start(base / f"server-{len(list(base.glob('server-*')))}")
            users = state["users"] if state else 0  # a worker still counted in stops the replacement
            state = {"pid": server.pid, "url": server.url, "log": str(server.log), "users": users}
        state["users"] += 1
        state_file.write_text(json.dumps(state))
    try:
        yield Server(state["pid"], state["url"], Path(state["log"]))
    finally:
        with file_lock(lock):
            state = json.loads(state_file.read_text())
            state["users"] -= 1
            if state["users"] > 0:
                state_file.write_text(json.dumps(state))
            else:
                state_file.unlink()
                stop_group(state["pid"])
