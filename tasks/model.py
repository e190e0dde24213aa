"""Prefect tasks of the model stage: each one call into ``lite_rec.pipeline.steps`` / ``lite_rec.registry.promotion``."""

from __future__ import annotations

from prefect import task

from lite_rec.core.config import LiteRecConfig
from lite_rec.pipeline import steps as offline
from lite_rec.registry.promotion import PromotionDecision, promote
from lite_rec.registry.versions import RegistryUnavailable


@task(name="embed-items")
def embed_task(cfg: LiteRecConfig, progress: bool = True):
    """Item texts -> (N+1, D) item vectors, encoding only new or changed items."""
    return offline.embed_items(cfg, progress=progress)


@task(name="train-evaluate")
def train_task(cfg: LiteRecConfig, item_vectors, progress: bool = True, nproc_per_node: int = 1):
    """Train with early stopping, resume from checkpoints, evaluate valid and test; with
    ``nproc_per_node`` > 1 as that many torchrun ranks (DDP) whose rank 0 writes the run folder."""
    return offline.train(cfg, item_vectors, progress=progress, nproc_per_node=nproc_per_node)


def _registry_unreachable(task, task_run, state) -> bool:
    """Retry registration only when the tracking server could not be reached; any other failure
    would fail the same way again (and each try used to leave a FAILED run behind)."""
    try:
        state.result()
    except RegistryUnavailable:
        return True
    except BaseException:  # noqa: BLE001 - any other failure is final
        return False
    return False


@task(name="register-model", retries=2, retry_delay_seconds=10, retry_condition_fn=_registry_unreachable)
def register_task(cfg: LiteRecConfig, result):
    """Bundle + MLflow run + verified registry version with aliases (retried only while the server is unreachable)."""
    return offline.register(cfg, result)


@task(name="promote")
def promote_task(cfg: LiteRecConfig) -> PromotionDecision:
    """Challenger vs champion on the same held-out data; champion moves only past the margin."""
    return promote(cfg)
