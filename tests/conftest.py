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
