"""Load on the real service (loopback only, bounded in time and count): concurrent clients get
zero failed requests, also while ``champion`` moves to another version mid-run.

The swap is the point: the new version is loaded and warmed beside the old one, swapped in by
one reference assignment, and requests in flight finish on the model they started with. So no
request fails, responses switch from version 1 to version 2, and once a version-2 answer has
come back, no request started later is answered by version 1.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from lite_rec.registry.publish import log_training_run
from lite_rec.registry.versions import CHAMPION, set_champion
from tests.helpers.service_process import start_service
from tests.integration.test_registry import VALID_TARGET, Run, _variant, run  # noqa: F401 - fixture

pytestmark = pytest.mark.e2e

MODEL = "lite-rec-e2e-load"  # `run` registers under it, in its own experiment, on the run's shared MLflow server

CLIENTS = 6  # threads, one keep-alive connection each
DURATION_S = 10.0  # whole run
SWAP_AT_S = 4.0  # champion moves here
MAX_REQUESTS = 6000  # hard bound over all clients
TARGET = f"i{VALID_TARGET}"  # version 2 ranks it first for every user's history (tests.integration.test_registry._variant)


@dataclass(frozen=True)
class Outcome:
    started: float
    finished: float
    status: int  # -1: no HTTP answer (connection error, timeout)
    version: str | None
    top: str | None
    error: str | None = None


def _client_loop(url: str, seed: int, stop_at: float, budget: threading.Semaphore, out: list[Outcome],
                 histories: list[list[str]]) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=url, timeout=30) as client:
        while time.monotonic() < stop_at and budget.acquire(blocking=False):
            history = rng.choice(histories)  # the users' own histories: the ones version 2 is built to answer
            batch = rng.random() < 0.15
            started = time.monotonic()
            try:
                if batch:
                    r = client.post("/recommend/batch", json={"histories": [history, *rng.sample(histories, 2), []], "k": 5})
                else:
                    r = client.post("/recommend", json={"history": history, "k": 5})
                body = r.json()
                first = body["results"][0] if batch else body
                top = first["items"][0]["item_id"] if first["items"] and not first["fallback"] else None
                out.append(Outcome(started, time.monotonic(), r.status_code, body.get("model_version"), top))
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                out.append(Outcome(started, time.monotonic(), -1, None, None, f"{type(exc).__name__}: {exc}"))


def test_concurrent_clients_see_no_failure_while_champion_moves(run: Run, mlflow_server: str, tmp_path: Path) -> None:
    client = MlflowClient(mlflow_server, registry_uri=mlflow_server)  # never the process-wide registry URI another module set
    v1 = log_training_run(run.cfg, run.result, run.bundle_dir, commit="load")
    v2 = log_training_run(run.cfg, run.result, _variant(run, "bundle-load-better", 1.0), commit="load")
    seqs = pd.read_parquet(run.cfg.processed_dir / "sequences.parquet")
    histories = [[f"i{i}" for i in seq] for seq in seqs["train_seq"]]
    assert (v1.version, v2.version, v2.aliases) == ("1", "2", ("challenger",))
    svc = start_service(["--model", f"models:/{MODEL}@{CHAMPION}", "--device", "cpu", "--poll-interval", "0.5"],
                        tmp_path, env={"MLFLOW_TRACKING_URI": mlflow_server})
    try:
        assert svc.ready()["model_version"] == "1"
        outcomes: list[Outcome] = []  # list.append is atomic under the GIL
        budget = threading.Semaphore(MAX_REQUESTS)
        t0 = time.monotonic()
        stop_at = t0 + DURATION_S
        threads = [threading.Thread(target=_client_loop, args=(svc.url, s, stop_at, budget, outcomes, histories)) for s in range(CLIENTS)]
        for t in threads:
            t.start()
        time.sleep(SWAP_AT_S)
        set_champion(client, MODEL, v2.version)
        moved_at = time.monotonic()
        for t in threads:
            t.join(DURATION_S + 60)
        assert not any(t.is_alive() for t in threads)
        status = svc.ready()
    finally:
        svc.stop()

    failed = [o for o in outcomes if o.status != 200]
    assert failed == [], f"{len(failed)} failed requests, e.g. {failed[:3]}"
    assert len(outcomes) <= MAX_REQUESTS
    before = [o for o in outcomes if o.finished < moved_at]
    assert len(before) >= 20 and {o.version for o in before} == {"1"}
    first_v2 = min(o.finished for o in outcomes if o.version == "2")
    later = [o for o in outcomes if o.started > first_v2]
    assert len(later) >= 20, "too few requests after the swap to say anything"
    assert {o.version for o in later} == {"2"}, "a request started after the swap was answered by the old model"
    assert {o.top for o in later if o.top is not None} == {TARGET}
    assert {o.top for o in before if o.top is not None} != {TARGET}
    assert status["model_version"] == "2" and status["last_error"] is None

    latency_ms = np.array([o.finished - o.started for o in outcomes]) * 1000
    elapsed = max(o.finished for o in outcomes) - t0
    print(
        f"\n{len(outcomes)} requests from {CLIENTS} clients in {elapsed:.1f} s ({len(outcomes) / elapsed:.0f} req/s), 0 failed; "
        f"latency p50 {np.percentile(latency_ms, 50):.1f} ms, p99 {np.percentile(latency_ms, 99):.1f} ms; "
        f"swap seen {first_v2 - moved_at:.2f} s after the alias moved"
    )
