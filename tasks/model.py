"""Prefect tasks of the model stage: each one call into ``lite_rec.pipeline.steps`` / ``lite_rec.registry.promotion``."""

from __future__ import annotations

from prefect import task

from lite_rec.core.config import LiteRecConfig
from lite_rec.pipeline import steps as offline
from lite_rec.registry.promotion import PromotionDecision, promote


@task(name="embed-items")
def embed_task(cfg: LiteRecConfig, progress: bool = True):
    """Item texts -> (N+1, D) item vectors, encoding only new or changed items."""
    return offline.embed_items(cfg, progress=progress)


@task(name="train-evaluate")
def train_task(cfg: LiteRecConfig, item_vectors, progress: bool = True):
    """Train with early stopping, resume from checkpoints, evaluate valid and test."""
    return offline.train(cfg, item_vectors, progress=progress)


@task(name="register-model", retries=2, retry_delay_seconds=10)
def register_task(cfg: LiteRecConfig, result):
    """Bundle + MLflow run + verified registry version with aliases (retried: tracking-server I/O)."""
    return offline.register(cfg, result)


@task(name="promote")
def promote_task(cfg: LiteRecConfig) -> PromotionDecision:
    """Challenger vs champion on the same held-out data; champion moves only past the margin."""
    return promote(cfg)
