"""The `promote` flow: evaluate challenger and champion on the same held-out data, move champion if better."""

from __future__ import annotations

from typing import Any

from lite_rec_tasks.model import promote_task
from prefect import flow

from lite_rec.core.config import build_config


@flow(name="promote", log_prints=True)
def promote_flow(dataset: str = "ml-1m", profile: str | None = None, overrides: dict[str, Any] | None = None) -> dict:
    cfg = build_config(dataset, overrides, profile=profile)
    decision = promote_task(cfg)
    print(decision.as_json())
    return decision.__dict__
