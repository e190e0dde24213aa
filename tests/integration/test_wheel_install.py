"""A wheel install (no repository beside it) finds the SQL, configs and MLflow files it reads.

Builds the project's wheel, installs it without dependencies into a fresh virtual environment with
that environment's own pip (dependencies come from this test's environment through PYTHONPATH, which does not carry the
editable install's path hook), and runs the code that reads those folders from outside the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from lite_rec.core.config import REPO_ROOT
from lite_rec.data.fingerprint import code_files

pytestmark = pytest.mark.integration

PROBE = """
import json, sys
from lite_rec.core import config, fingerprint, registry, transform
from lite_rec.core.config import build_config
cfg = build_config("ml-1m", ["train.max_epochs=3"], profile="cpu")
print(json.dumps({
    "lite_rec": config.__file__, "prefix": sys.prefix,
    "sql": str(transform.SQL_DIR), "configs": str(config.CONFIG_DIR), "signature": str(registry.SIGNATURE_FILE),
    "signature_exists": registry.SIGNATURE_FILE.is_file(), "epochs": cfg.train.max_epochs, "backbone": cfg.model.backbone,
    "datasets": config.available_datasets(), "profiles": config.available_profiles(),
    "code_files": fingerprint.code_files(),
}))
"""


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    assert proc.returncode == 0, f"{cmd[:4]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc


def test_wheel_install_reads_its_installed_resources(tmp_path: Path) -> None:
    src = tmp_path / "src"  # a copy: building in place would leave build/ and *.egg-info in the checkout
    shutil.copytree(REPO_ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "data", "build", "*.egg-info", "__pycache__",
                                                                 ".pytest_cache", ".carry", ".whl", "mlruns", "mlflow.db"))
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)])
    (wheel,) = (tmp_path / "dist").glob("lite_rec-*.whl")
    env_dir = tmp_path / "env"
    _run([sys.executable, "-m", "venv", str(env_dir)])
    python = env_dir / "bin" / "python"
    # the new environment's own pip: `pip install --prefix` from this one would uninstall this
    # environment's editable lite-rec as a "previous version"
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-compile", str(wheel)])
    deps = sysconfig.get_paths()["purelib"]  # this environment's packages, without running its .pth hooks
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = _run([str(python), "-c", PROBE], cwd=tmp_path, env={**env, "PYTHONPATH": deps}).stdout
    got = json.loads(out.strip().splitlines()[-1])

    share = env_dir.resolve() / "share" / "lite-rec"
    assert Path(got["lite_rec"]).resolve().is_relative_to(env_dir.resolve()), got["lite_rec"]  # the wheel, not the checkout
    assert Path(got["sql"]).resolve() == share / "sql"
    assert Path(got["configs"]).resolve() == share / "configs"
    assert got["signature_exists"] and Path(got["signature"]).resolve() == share / "mlflow" / "signature.json"
    assert (got["epochs"], got["backbone"]) == (3, "lean")  # dataset YAML + profile YAML read from share/
    assert set(got["datasets"]) >= {"ml-1m", "ml-100k", "amazon-movies"} and set(got["profiles"]) == {"cpu", "gpu", "paper", "smoke"}
    # the data stage's code fingerprint is the same installed or checked out: outputs stay current
    assert got["code_files"] == code_files()
