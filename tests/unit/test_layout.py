"""Project-shape guards: the real mlflow library is importable, lite_rec stays Prefect-free, and its
subpackages import one way only (the layer order below), with no import loop between modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import lite_rec

ROOT = Path(lite_rec.__file__).resolve().parent.parent
LIB = ROOT / "lite_rec"

# What each subpackage may import besides itself. The online side (infer, serve) never reaches
# training, evaluation or the data stage's ingest; eval never reaches train.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "data": {"core"},
    "items": {"core"},
    "model": {"core", "data", "items"},
    "eval": {"core", "data", "items", "model"},
    "train": {"core", "data", "items", "model", "eval", "infer"},
    "infer": {"core", "data", "model"},
    "registry": {"core", "data", "items", "model", "eval", "train", "infer"},
    "serve": {"core", "model", "infer", "registry"},
    "pipeline": {"core", "data", "items", "model", "eval", "train", "infer", "registry", "serve"},
}


def _imports(path: Path) -> list[str]:
    """Every lite_rec module `path` imports (function-level imports included)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lite_rec"):
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                out.append(child if (ROOT / (child.replace(".", "/") + ".py")).exists() else node.module)
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.startswith("lite_rec")]
    return out


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def test_import_mlflow_resolves_to_installed_package() -> None:
    import mlflow

    assert not (ROOT / "mlflow" / "__init__.py").exists()
    assert "site-packages" in str(Path(mlflow.__file__).resolve())


def test_library_never_imports_prefect() -> None:
    offenders = []
    for path in LIB.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in {"prefect", "flows", "tasks", "lite_rec_flows", "lite_rec_tasks"}]
    assert offenders == []


def test_every_module_lives_in_a_named_layer() -> None:
    loose = [p.name for p in LIB.glob("*.py") if p.name != "__init__.py"]
    assert loose == [], f"modules outside a subpackage: {loose}"
    assert {p.name for p in LIB.iterdir() if p.is_dir() and p.name != "__pycache__"} == set(ALLOWED)


def test_subpackages_import_only_downward() -> None:
    offenders = []
    for path in LIB.rglob("*.py"):
        parts = path.relative_to(LIB).parts
        if len(parts) < 2:
            continue
        layer = parts[0]
        for target in _imports(path):
            other = target.split(".")[1] if target.count(".") else ""
            if other and other != layer and other not in ALLOWED[layer]:
                offenders.append(f"{_module(path)} -> {target}")
    assert offenders == [], "imports against the layer order:\n" + "\n".join(offenders)


def test_no_import_loop_between_modules() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    for path in LIB.rglob("*.py"):
        graph[_module(path)].update(t for t in _imports(path) if not t.endswith("__init__"))
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def visit(node: str, stack: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack, node, nxt]
            if nxt not in state and (cycle := visit(nxt, [*stack, node])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            assert (cycle := visit(start, [])) is None, " -> ".join(cycle)


def test_modules_stay_under_500_lines() -> None:
    long = {_module(p): n for p in LIB.rglob("*.py") if (n := len(p.read_text(encoding="utf-8").splitlines())) > 500}
    assert long == {}


def test_serving_loads_no_training_data_stage_or_orchestration_code() -> None:
    """The service, batch scoring and the pyfunc import only what answering a request needs."""
    code = ("import sys, lite_rec.serve.app, lite_rec.serve.scoring, lite_rec.infer.recommender\n"
            "bad = sorted(m for m in sys.modules if m.startswith(('lite_rec.train', 'lite_rec.eval', 'lite_rec.data.ingest',"
            " 'lite_rec.items', 'prefect', 'great_expectations', 'duckdb')))\n"
            "print(','.join(bad))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def test_the_service_module_imports_no_registry_client() -> None:
    """A GPU host that serves a copied bundle needs the serving stack only: MLflow is imported when a
    ``models:/`` reference is served (the watcher's first registry call), not by the service module."""
    code = "import sys, lite_rec.serve.app; print(','.join(m for m in ('mlflow',) if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
