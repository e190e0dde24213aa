"""The service's import cost: serving a bundle directory needs no registry client."""

from __future__ import annotations

import subprocess
import sys


def test_the_service_module_imports_no_mlflow() -> None:
    """A GPU host that serves a copied bundle needs the serving stack only: MLflow is imported when a
    ``models:/`` reference is served (the watcher's first registry call), not by the service module."""
    code = "import sys, lite_rec.serve.app; print(sorted(m for m in ('mlflow', 'prefect', 'duckdb') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
