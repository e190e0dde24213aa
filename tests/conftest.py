"""Test-wide environment: everything offline and on loopback, homes inside temp dirs."""

from __future__ import annotations

import os

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

