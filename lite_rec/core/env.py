"""Environment defaults that keep every run local: telemetry off, tool homes in the data dir.

Why here and not in a shell profile: the same defaults must hold for the CLI, the Prefect
flows, the tests and CI, and Prefect reads its settings when it is first imported, so they
must be in ``os.environ`` before that import. Values a user has already set win.
"""

from __future__ import annotations

import os
from pathlib import Path

TELEMETRY_OFF = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # An in-process Prefect server on a fresh home takes ~18 s to start; the default is 20 s.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
}


def apply_local_defaults(data_dir: Path | str | None = None) -> dict[str, str]:
    """Set loopback/telemetry defaults and Prefect/MLflow homes under `data_dir`.

    Returns the variables this call set (those the user had set are left alone).
    """
    root = Path(data_dir or os.environ.get("LITE_REC_DATA_DIR", "data")).resolve()
    wanted = dict(TELEMETRY_OFF)
    wanted["PREFECT_HOME"] = str(root / "prefect")
    wanted["PREFECT_API_DATABASE_CONNECTION_URL"] = f"sqlite+aiosqlite:///{root / 'prefect' / 'prefect.db'}"
    wanted["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    set_now: dict[str, str] = {}
    for key, value in wanted.items():
        if key not in os.environ:
            os.environ[key] = value
            set_now[key] = value
    (root / "prefect").mkdir(parents=True, exist_ok=True)
    (root / "mlflow").mkdir(parents=True, exist_ok=True)
    return set_now
