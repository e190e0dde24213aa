"""Flow parameters are the typed config: invalid ones fail before any work, naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from lite_rec.core.errors import ConfigError


@pytest.mark.parametrize(
    ("flow_path", "overrides", "field"),
    [
        ("lite_rec_flows.train:train_flow", {"train": {"lrr": 1}}, "train.lrr"),
        ("lite_rec_flows.train:train_flow", {"model": {"dropout": 3}}, "model.dropout"),
        ("lite_rec_flows.ingest:ingest_flow", {"dataset": {"k_core": 0}}, "dataset.k_core"),
        ("lite_rec_flows.promote:promote_flow", {"tracking": {"promote_margn": 0.1}}, "tracking.promote_margn"),
    ],
)
def test_invalid_parameters_fail_before_any_work(tmp_path: Path, flow_path: str, overrides: dict, field: str) -> None:
    import importlib

    module, name = flow_path.split(":")
    flow = getattr(importlib.import_module(module), name)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        flow.fn(dataset="ml-100k", overrides={**overrides, "data_dir": str(tmp_path)})
    assert list(tmp_path.iterdir()) == []  # nothing downloaded, nothing written


@pytest.mark.parametrize("flow_path", ["lite_rec_flows.train:train_flow", "lite_rec_flows.ingest:ingest_flow", "lite_rec_flows.promote:promote_flow"])
def test_flow_parameters_validate_without_shadowing_warnings(flow_path: str) -> None:
    """Prefect builds a pydantic model of a flow's parameters; a parameter named like one of that
    model's attributes (e.g. ``register``) warns on every run and is unusable with warnings as errors."""
    import importlib
    import warnings

    module, name = flow_path.split(":")
    flow = getattr(importlib.import_module(module), name)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        params = flow.validate_parameters({"dataset": "ml-100k"})
    assert params["dataset"] == "ml-100k"
