"""A user's wheel install: build the wheel, install it with its dependencies into an environment
without the checkout, and run ingest, training and registration from another directory.

Why the environment is a copy of this one: a fresh download of the pinned stack is ~2 GB and took
over four minutes here. A hard-linked copy of the test environment (falling back to a plain copy)
has the same dependencies installed the way pip installs them, side by side in one
``site-packages`` (which is what hid the MLflow-folder bug: the project's ``mlflow/`` lookup found
the MLflow library there). The editable lite-rec is uninstalled from the copy first, and the wheel
is installed *with* dependency resolution (no ``--no-deps``), so pip checks every pin.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lite_rec.core.config import REPO_ROOT
from lite_rec.data.fingerprint import code_files

pytestmark = pytest.mark.integration

PROBE = """
import importlib.util, json, sys
from lite_rec.core import config
from lite_rec.data import fingerprint, transform
from lite_rec.registry import publish
from lite_rec.core.config import build_config
cfg = build_config("ml-1m", ["train.max_epochs=3"], profile="cpu")
print(json.dumps({
    "lite_rec": config.__file__, "prefix": sys.prefix,
    "sql": str(transform.SQL_DIR), "configs": str(config.CONFIG_DIR), "signature": str(publish.SIGNATURE_FILE),
    "pyfunc": str(publish.PYFUNC_FILE), "pyfunc_exists": publish.PYFUNC_FILE.is_file(),
    "signature_exists": publish.SIGNATURE_FILE.is_file(), "epochs": cfg.train.max_epochs, "backbone": cfg.model.backbone,
    "datasets": config.available_datasets(), "profiles": config.available_profiles(),
    "code_files": fingerprint.code_files(),
    "generic_names": [n for n in ("flows", "tasks") if importlib.util.find_spec(n) is not None],
    "cli": importlib.util.find_spec("lite_rec_flows.cli") is not None,
}))
"""


def _run(cmd: list[str], timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    assert proc.returncode == 0, f"{cmd[:4]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _copy_environment(dst: Path) -> None:
    """This test environment's interpreter and packages at `dst` (hard links where possible)."""
    src = Path(sys.prefix)
    if subprocess.run(["cp", "-al", str(src), str(dst)], capture_output=True).returncode != 0:
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst, symlinks=True)


_TOP_LEVEL_OUTPUTS = {".git", ".venv", "data", "build", ".pytest_cache", ".carry", ".whl", "mlruns", "mlflow.db"}


def _not_source(directory: str, names: list[str]) -> set[str]:
    """Names copytree skips: run outputs at the checkout's top only (lite_rec/data is source), caches anywhere."""
    top = Path(directory).resolve() == REPO_ROOT.resolve()
    return {n for n in names if (top and n in _TOP_LEVEL_OUTPUTS) or n == "__pycache__" or n.endswith(".egg-info")}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the environment in which lite-rec is the wheel, not the checkout; returns its python."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"  # a copy: building in place would leave build/ and *.egg-info in the checkout
    shutil.copytree(REPO_ROOT, src, ignore=_not_source)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"), str(src)])
    (wheel,) = (root / "dist").glob("lite_rec-*.whl")
    env_dir = root / "env"
    _copy_environment(env_dir)
    python = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # uninstalling deletes the editable install's files in the copy (unlinks: the original keeps them)
    _run([str(python), "-m", "pip", "uninstall", "-y", "-q", "lite-rec"], env=env, cwd=root)
    _run([str(python), "-m", "pip", "install", "-q", "--no-compile", "--disable-pip-version-check", str(wheel)], env=env, cwd=root)
    return python


def test_wheel_install_reads_its_installed_resources_and_claims_no_generic_names(installed: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    out = _run([str(installed), "-c", PROBE], cwd=tmp_path, env=env).stdout
    got = json.loads(out.strip().splitlines()[-1])

    env_dir = installed.parent.parent.resolve()
    share = env_dir / "share" / "lite-rec"
    assert Path(got["lite_rec"]).resolve().is_relative_to(env_dir), got["lite_rec"]  # the wheel, not the checkout
    assert Path(got["sql"]).resolve() == share / "sql"
    assert Path(got["configs"]).resolve() == share / "configs"
    assert got["signature_exists"] and Path(got["signature"]).resolve() == share / "mlflow" / "signature.json"
    assert got["pyfunc_exists"] and Path(got["pyfunc"]).resolve() == share / "mlflow" / "pyfunc_model.py"
    assert (got["epochs"], got["backbone"]) == (3, "lean")  # dataset YAML + profile YAML read from share/
    assert set(got["datasets"]) >= {"ml-1m", "ml-100k", "amazon-movies"} and set(got["profiles"]) == {"cpu", "gpu", "gpu-ids", "paper", "smoke"}
    # the data stage's code fingerprint is the same installed or checked out: outputs stay current
    assert got["code_files"] == code_files()
    assert got["generic_names"] == [] and got["cli"]  # our flows and tasks ship under our own names


def test_wheel_install_ingests_trains_and_registers_from_another_directory(installed: Path, tmp_path: Path) -> None:
    """The command a user runs after `pip install lite-rec`, outside any checkout, to a registered model."""
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "MLFLOW_TRACKING_URI", "PREFECT_API_URL")}
    cli = installed.parent / "lite-rec"
    done = _run([str(cli), "train", "ml-100k", "--profile", "smoke", "--data-dir", str(data_dir), "--no-progress",
                 "--set", "model.item_repr=id", "--set", "train.max_epochs=1"], cwd=tmp_path, env=env, timeout=900)
    assert "registered model:  models:/lite-rec-ml100k/1 (aliases: challenger, champion)" in done.stdout, done.stdout
    check = ("import json, sys; from mlflow.tracking import MlflowClient; c = MlflowClient(sys.argv[1]);"
             "runs = c.search_runs([e.experiment_id for e in c.search_experiments()]);"
             "print(json.dumps([r.info.status for r in runs]))")
    uri = f"sqlite:///{data_dir.resolve() / 'mlflow' / 'mlflow.db'}"
    statuses = json.loads(_run([str(installed), "-c", check, uri], cwd=tmp_path, env=env).stdout.strip().splitlines()[-1])
    assert statuses == ["FINISHED"]
