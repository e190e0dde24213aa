"""Start and stop the local services of a team set-up: Prefect server, workers, MLflow server.

Why here: the embedded default needs none of them (flows run in-process, MLflow writes a sqlite
file), but deployments, schedules and the registry UI do. These are the same commands a team
runs against shared servers, only with loopback URLs. Every process is started in its own
process group and its PID recorded in ``<data_dir>/stack/pids.json``, so ``stop`` ends exactly
what ``start`` began (the MLflow server and Prefect workers fork children) and nothing else.
This module only launches CLIs; it does not import Prefect.
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lite_rec.core.errors import LiteRecError

BIN = Path(sys.executable).parent  # the venv's console scripts (prefect, mlflow) live beside python


class StackError(LiteRecError):
    """A local service did not start (the message names it and its log file)."""


@dataclass
class Service:
    name: str
    pid: int
    url: str | None
    log: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout_s: float, *, name: str, log: Path, pid: int) -> None:
    """Poll `url` until it answers 200, the process dies, or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            raise StackError(f"{name} exited during start-up; see {log}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 (loopback only)
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise StackError(f"{name} did not answer {url} within {timeout_s:.0f} s; see {log}:\n{_tail(log)}")


def _tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, read from /proc (Linux): a child that left the process group
    (Prefect starts flow runs in their own session) still has to be found and stopped."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "(comm)": state, ppid, ...
        except OSError:
            continue  # exited while we looked
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie child of ours still answers kill(0): reap it
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGKILL it when the process that started it dies
    (``prctl(PR_SET_PDEATHSIG)``), so a ``kill -9`` of ``lite-rec train`` takes its temporary
    server along instead of leaving it holding a port. A no-op where prctl does not exist."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def spawn(name: str, cmd: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None,
          *, die_with_parent: bool = False) -> Service:
    """Start `cmd` in a new process group, output to `log`; with `die_with_parent` it is killed
    when this process dies, however it dies (Linux)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True,
                                preexec_fn=_die_with_parent if die_with_parent else None)
    return Service(name, proc.pid, None, log)


def stop(service: Service, timeout_s: float = 20.0) -> None:
    """SIGINT, then SIGTERM, then SIGKILL the service's whole process group."""
    for sig, wait in ((signal.SIGINT, timeout_s / 2), (signal.SIGINT, 2.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
        try:
            os.killpg(service.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(service.pid) and not _group_alive(service.pid):
                return
            time.sleep(0.2)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def start_mlflow(root: Path, port: int | None = None) -> Service:
    """MLflow tracking server + registry on 127.0.0.1 with a sqlite backend and local artifacts."""
    port = port or free_port()
    root.mkdir(parents=True, exist_ok=True)
    cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{(root / 'mlflow.db').resolve()}",
           "--artifacts-destination", str((root / "artifacts").resolve()), "--workers", "1"]
    # MLflow 3.17 otherwise starts job-runner processes that outlive the server's PID.
    svc = spawn("mlflow", cmd, root / "mlflow-server.log", env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    svc.url = f"http://127.0.0.1:{port}"
    wait_http(f"{svc.url}/health", 90, name="mlflow server", log=svc.log, pid=svc.pid)
    return svc


def prefect_env(home: Path, api_url: str | None = None) -> dict[str, str]:
    env = {"PREFECT_HOME": str(home.resolve()), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


@contextmanager
def temporary_prefect_server(home: Path) -> Iterator[Service]:
    """A Prefect API server for one in-process flow run, stopped when the block ends and killed
    with this process if it is killed (``spawn(die_with_parent=True)``).

    Why not Prefect's own temporary server: it is started as an ordinary child process, so a
    ``kill -9`` of the parent leaves it running with its port held. This one is the same
    server (Prefect's ASGI app under uvicorn, UI off, its database under `home`); the block sets
    ``PREFECT_API_URL`` to it, which Prefect reads when it is first imported.
    """
    port = free_port()
    env = {**prefect_env(home), "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1"}
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
           "--port", str(port), "--log-level", "error", "--lifespan", "on"]
    svc = spawn("prefect-temporary-server", cmd, home / "logs" / "temporary-server.log", env, die_with_parent=True)
    svc.url = f"http://127.0.0.1:{port}/api"
    saved = os.environ.get("PREFECT_API_URL")
    try:
        wait_http(f"{svc.url}/health", 90, name=svc.name, log=svc.log, pid=svc.pid)
        os.environ["PREFECT_API_URL"] = svc.url
        yield svc
    finally:
        stop(svc, timeout_s=10)
        if saved is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = saved


def start_prefect_server(home: Path, port: int | None = None) -> Service:
    """Prefect server on 127.0.0.1 (sqlite in PREFECT_HOME)."""
    port = port or free_port()
    env = prefect_env(home)
    env["PREFECT_API_DATABASE_CONNECTION_URL"] = f"sqlite+aiosqlite:///{(home / 'prefect.db').resolve()}"
    cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    svc = spawn("prefect-server", cmd, home / "prefect-server.log", env=env)
    svc.url = f"http://127.0.0.1:{port}/api"
    wait_http(f"{svc.url}/health", 120, name="prefect server", log=svc.log, pid=svc.pid)
    return svc


def prefect_cli(args: list[str], home: Path, api_url: str, cwd: Path, timeout_s: float = 300,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run one `prefect ...` command against `api_url`; a failure raises with its output."""
    proc = subprocess.run([str(BIN / "prefect"), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout_s,
                          env={**os.environ, **prefect_env(home, api_url), **(env or {})})
    if proc.returncode != 0:
        raise StackError(f"prefect {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def start_worker(pool: str, home: Path, api_url: str, cwd: Path, env: dict[str, str] | None = None) -> Service:
    """A process-type worker for `pool` (created if missing)."""
    try:
        prefect_cli(["work-pool", "create", pool, "--type", "process"], home, api_url, cwd, env=env)
    except StackError as exc:
        if "already exists" not in str(exc):
            raise
    cmd = [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process"]
    return spawn(f"worker-{pool}", cmd, home / f"worker-{pool}.log", env={**prefect_env(home, api_url), **(env or {})},
                 cwd=cwd)


def save_pids(path: Path, services: list[Service]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([{**s.__dict__, "log": str(s.log)} for s in services], indent=2))


def load_pids(path: Path) -> list[Service]:
    if not path.exists():
        return []
    return [Service(d["name"], d["pid"], d["url"], Path(d["log"])) for d in json.loads(path.read_text())]
