"""Flow parameters are the typed config: invalid ones fail before any work, naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from lite_rec.errors import ConfigError


@pytest.mark.parametrize(
    ("flow_path", "overrides", "field"),
    [
        ("flows.train:train_flow", {"train": {"lrr": 1}}, "train.lrr"),
        ("flows.train:train_flow", {"model": {"dropout": 3}}, "model.dropout"),
        ("flows.ingest:ingest_flow", {"dataset": {"k_core": 0}}, "dataset.k_core"),
        ("flows.promote:promote_flow", {"tracking": {"promote_margn": 0.1}}, "tracking.promote_margn"),
    ],
)
def test_invalid_parameters_fail_before_any_work(tmp_path: Path, flow_path: str, overrides: dict, field: str) -> None:
    import importlib

    module, name = flow_path.split(":")
    flow = getattr(importlib.import_module(module), name)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        flow.fn(dataset="ml-100k", overrides={**overrides, "data_dir": str(tmp_path)})
    assert list(tmp_path.iterdir()) == []  # nothing downloaded, nothing written
