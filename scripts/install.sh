#!/usr/bin/env bash
# Create .venv and install the exact pinned stack plus lite-rec itself (editable).
# Idempotent: a second run only checks that everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip==25.3
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
.venv/bin/python -c "import lite_rec, torch, duckdb, prefect, mlflow, great_expectations" 
echo "installed: $(.venv/bin/lite-rec --help >/dev/null && echo lite-rec OK) in $(pwd)/.venv"
