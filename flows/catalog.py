"""The `add-items` flow: a file of new or changed items -> a new catalog version of the registered model, no retraining.

Only a model with ``model.head=inductive`` can take items it was not trained on (docs/serving.md,
"Adding items without retraining"); the version is promoted when it extends the champion and
does not score more than ``tracking.catalog_max_drop`` below it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lite_rec_tasks.catalog import add_items_task
from prefect import flow

from lite_rec.core.config import build_config


@flow(name="add-items", log_prints=True)
def add_items_flow(items: str, dataset: str = "ml-1m", profile: str | None = None, overrides: dict[str, Any] | None = None,
                   model: str | None = None, progress: bool = True) -> dict:
    cfg = build_config(dataset, overrides, profile=profile)  # validated before any work
    update = add_items_task(cfg, Path(items), model, progress=progress)
    print(update.summary())
    return {"model_uri": update.registered.model_uri, "extends": update.extends, "added": update.change.added,
            "updated": update.change.updated, "encoded": update.encoded, "promoted": update.decision.promoted,
            "champion": update.decision.champion_after, "reason": update.decision.reason}
