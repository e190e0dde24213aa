"""Test-wide environment: everything offline and on loopback, homes inside temp dirs."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# Set before any test module imports prefect, mlflow or transformers.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
# Triton's CPU interpreter for the serving attention kernel (tests/unit/test_triton_attention.py):
# triton decides interpreted-or-compiled for its own library functions (tl.max, ...) when it is
# first imported, and torch or transformers may import it long before that test module runs.
os.environ.setdefault("TRITON_INTERPRET", "1")
# pytest-xdist workers (pyproject.toml addopts: -n) share the cores: each worker's torch, and what it
# starts, gets its share of them for intra-op threads, not one thread per core in every worker
# (which oversubscribes the CPU and spins). A value already set wins.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))
# An OpenMP thread waiting for work sleeps instead of spinning (GNU libgomp, torch's CPU backend,
# spins by default). Here every core is shared with other workers, servers and subprocesses, and a
# process that runs 2 threads anyway (a Prefect deployment's flow run: OMP_NUM_THREADS=2 from the
# cpu pool; it inherits this through the worker) otherwise burns the cores the others need waiting
# for its descheduled partner thread: a smoke `lite-rec train` with both cores busy took 100
# CPU-seconds and 204 s with spinning threads, 31 CPU-seconds and 85 s without (1 thread: 31 s, 96 s).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# The slowest test modules, slowest first (pytest --durations, 2 workers). pytest-xdist
# (pyproject.toml addopts: --dist loadfile --no-loadscope-reorder) hands each module whole to the
# next free worker in collection order: starting with the longest ones keeps the last modules
# short, so no worker waits long for another at the end. Only the order changes; a module not
# named here (new, renamed) keeps its place in collection order after these.
SLOW_MODULES_FIRST = [
    "tests/e2e/test_train_deployment.py",
    "tests/integration/test_cli_flows.py",
    "tests/e2e/test_service.py",
    "tests/integration/test_wheel_install.py",
    "tests/integration/test_ray_scoring.py",
    "tests/integration/test_context_serving.py",
    "tests/integration/test_distributed.py",
    "tests/e2e/test_pyfunc_parity.py",
    "tests/integration/test_add_items.py",
    "tests/integration/test_registry.py",
    "tests/e2e/test_load.py",
    "tests/unit/infer/test_onnx_export.py",
    "tests/unit/infer/test_triton_attention.py",
    "tests/integration/test_score_flow.py",
    "tests/integration/test_train_sampled_real.py",
    "tests/unit/infer/test_serving_benchmarks.py",
    "tests/integration/test_train_real.py",
]


def pytest_collection_modifyitems(items: list) -> None:
    rank = {path: n for n, path in enumerate(SLOW_MODULES_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))  # stable: the rest keep their order


# ---------------------------------------------------------------------------------------------
# Servers shared by the whole run (every xdist worker): tests/helpers/shared_servers.py


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of the run's one ``mlflow server`` on 127.0.0.1 (sqlite, proxied artifacts). A module that
    registers models there uses its own registered-model and experiment names (the registry
    tests keep the defaults), so it never sees another module's versions or aliases."""
    from tests.helpers.shared_servers import shared_server, start_mlflow_server

    with shared_server(tmp_path_factory, "mlflow", start_mlflow_server) as server:
        yield server.url


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """API URL of the run's one Prefect server on 127.0.0.1, as a user's own server
    (``PREFECT_API_URL``): CLI runs and in-process flows given it start no temporary server of their own."""
    from tests.helpers.shared_servers import shared_server, start_prefect_server

    with shared_server(tmp_path_factory, "prefect", start_prefect_server) as server:
        yield server.url
