"""`mlflow_uris` scopes MLflow's process-wide URIs to one block and puts everything back.

The CI failure it fixes: a module set the global URIs to its own server, stopped it, and a
later module's ``load_model("models:/...")`` went to the dead port.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import mlflow
from lite_rec.registry.client import mlflow_uris


def _store(tmp_path: Path, name: str) -> str:
    return f"sqlite:///{tmp_path / name}.db"


def test_uris_apply_inside_and_are_restored_after(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outer = _store(tmp_path, "outer")
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    mlflow.set_tracking_uri(outer)
    try:
        inner = _store(tmp_path, "inner")
        with mlflow_uris(MlflowClient(tracking_uri=inner, registry_uri=inner)):
            assert mlflow.get_tracking_uri() == inner
            assert mlflow.get_registry_uri() == inner
            assert os.environ["MLFLOW_REGISTRY_URI"] == inner
        assert mlflow.get_tracking_uri() == outer
        assert os.environ["MLFLOW_TRACKING_URI"] == outer
        assert "MLFLOW_REGISTRY_URI" not in os.environ  # unset before, unset after
        assert mlflow.get_registry_uri() == outer  # falls back to the tracking URI again
    finally:
        mlflow.set_tracking_uri(None)


def test_restored_even_when_the_block_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", _store(tmp_path, "env"))
    before = mlflow.get_tracking_uri()
    inner = _store(tmp_path, "inner")
    with pytest.raises(RuntimeError, match="boom"), mlflow_uris(MlflowClient(tracking_uri=inner)):
        raise RuntimeError("boom")
    assert mlflow.get_tracking_uri() == before == os.environ["MLFLOW_TRACKING_URI"]
