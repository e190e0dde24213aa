"""The real ``lite_rec.serve.app`` process on 127.0.0.1 for e2e tests: start, wait, stop by PID.

Why a subprocess and not FastAPI's TestClient: the claims under test ("never a crashed
worker", 413 on the bytes that arrive, hot swap under load) are about the real uvicorn server,
its sockets and its threads. The process gets its own process group, so stopping it by PID also stops
anything it started; the log file is attached to any failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from lite_rec.pipeline import stack as local_stack

from tests.helpers.shared_servers import free_port, stop_process

REPO = Path(__file__).resolve().parents[2]


@dataclass
class ServiceProcess:
    proc: subprocess.Popen
    url: str
    log_path: Path

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def ready(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/ready", timeout=10).json()

    def wait_for(self, predicate: Any, timeout: float = 60.0, what: str = "condition") -> dict[str, Any]:
        """Poll /ready until `predicate(status)` holds; fail with the server log otherwise."""
        deadline = time.monotonic() + timeout
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            if not self.alive():
                raise AssertionError(f"service exited with {self.proc.returncode} waiting for {what}:\n{self.log_tail()}")
            try:
                status = self.ready()
                if predicate(status):
                    return status
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}; last /ready {status}\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop the process group by PID (idempotent: a reaped PID is never signalled again)."""
        if self.proc.returncode is None:
            stop_process(self.proc)


def start_service(args: list[str], log_dir: Path, env: dict[str, str] | None = None, wait_ready: bool = True,
                  timeout: float = 120.0) -> ServiceProcess:
    """``python -m lite_rec.serve.app <args> --host 127.0.0.1 --port <free>``; waits for /ready (or /health)."""
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"serve-{port}.log"
    cmd = [sys.executable, "-m", "lite_rec.serve.app", *args, "--host", "127.0.0.1", "--port", str(port), "--log-level", "info"]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "MLFLOW_DISABLE_TELEMETRY": "true", **(env or {})}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, process_group=0, env=full_env)
    svc = ServiceProcess(proc, f"http://127.0.0.1:{port}", log_path)
    try:
        deadline = time.monotonic() + timeout
        path = "/ready" if wait_ready else "/health"
        while True:
            if not svc.alive():
                raise AssertionError(f"service exited with {proc.returncode}:\n{svc.log_tail()}")
            try:
                if httpx.get(svc.url + path, timeout=5).status_code == 200:
                    return svc
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"service did not answer {path} in {timeout} s:\n{svc.log_tail()}")
            time.sleep(0.2)
    except BaseException:
        svc.stop()
        raise


@contextmanager
def mlflow_pyfunc_server(model: str, root: Path, tracking_uri: str) -> Iterator[str]:
    """`mlflow models serve` of `model` on 127.0.0.1, as the docs run it; yields its URL once /ping
    answers and stops its whole process group by PID (it starts a uvicorn child)."""
    bin_dir = str(Path(sys.executable).parent)  # it runs `uvicorn` by name: the venv's must come first
    env = {"MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_DISABLE_TELEMETRY": "true",
           "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    port = local_stack.free_port()
    cmd = [str(Path(bin_dir) / "mlflow"), "models", "serve", "-m", model, "--env-manager", "local",
           "-h", "127.0.0.1", "-p", str(port), "--workers", "1"]
    pyfunc = local_stack.spawn("mlflow models serve", cmd, root / "pyfunc.log", env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        local_stack.wait_http(f"{url}/ping", 120, name=pyfunc.name, log=pyfunc.log, pid=pyfunc.pid)
        yield url
    finally:
        local_stack.stop(pyfunc)
