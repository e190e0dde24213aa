"""Prefect task of the catalog update: one call into ``lite_rec.registry.catalog``."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from lite_rec.core.config import LiteRecConfig
from lite_rec.registry.catalog import CatalogUpdate, add_items


# no retries: a failure before registering changes nothing (a re-run starts clean), and registering twice would make
# two versions; NO_CACHE: the same file must make a new version when the model it extends changed
@task(name="add-items", cache_policy=NO_CACHE)
def add_items_task(cfg: LiteRecConfig, items_file: Path, model: str | None = None, progress: bool = True) -> CatalogUpdate:
    """Items file -> checked, encoded (new texts only), a new verified version of the model, promoted by the catalog rule."""
    return add_items(cfg, items_file, model, progress=progress)
