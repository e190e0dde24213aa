"""Project-shape guards: the real mlflow library is importable, lite_rec stays Prefect-free."""

from __future__ import annotations

import ast
from pathlib import Path

import lite_rec

ROOT = Path(lite_rec.__file__).resolve().parent.parent


def test_import_mlflow_resolves_to_installed_package() -> None:
    import mlflow

    assert not (ROOT / "mlflow" / "__init__.py").exists()
    assert "site-packages" in str(Path(mlflow.__file__).resolve())


def test_library_never_imports_prefect() -> None:
    offenders = []
    for path in (ROOT / "lite_rec").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in {"prefect", "flows", "tasks"}]
    assert offenders == []
