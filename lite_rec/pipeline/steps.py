"""The offline stage's model steps as plain functions: embed, train, register, promote.

Why a module of its own: the Prefect tasks (``tasks/model.py``) and anything that runs without
Prefect call the same functions, so a flow stays a list of task calls. Each step is
restartable: item vectors come from an incremental cache, training resumes from the run
folder's checkpoints (the folder name is derived from the config, so a re-run after a crash
finds it), and registration leaves no half-registered version behind.
"""

from __future__ import annotations

import hashlib
import json
import os

import torch

from lite_rec.core.config import LiteRecConfig


def run_name(cfg: LiteRecConfig) -> str:
    """A stable, readable name for a training run: the same config gives the same folder.

    The hash covers everything that changes the trained model (dataset, model, train and eval
    sections), not tracking or serving settings.
    """
    relevant = cfg.model_dump(mode="json", include={"dataset", "item_encoder", "model", "train", "eval"})
    digest = hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:10]
    return f"{cfg.model.item_repr.replace('+', '')}-{cfg.train.strategy}-{digest}"


def embed_items(cfg: LiteRecConfig, *, progress: bool = True) -> torch.Tensor | None:
    """(N+1, D) item vectors from the cache (encoding only new or changed items); None for id-only models."""
    if cfg.model.item_repr == "id":
        return None
    from lite_rec.items.cache import load_or_encode_items

    return load_or_encode_items(cfg, progress=progress).vectors


def train(cfg: LiteRecConfig, item_vectors: torch.Tensor | None, *, progress: bool = True):
    """Train (or resume, or reload a finished run) under ``<runs_dir>/models/<run_name>``."""
    from lite_rec.data.sequences import read_sequences
    from lite_rec.train.run import train_model

    sequences = read_sequences(cfg.processed_dir / "sequences.parquet")
    return train_model(cfg, sequences, item_vectors, cfg.runs_dir / "models" / run_name(cfg), progress=progress,
                       step_sleep=step_sleep_from_env())


def step_sleep_from_env() -> float:
    """``LITE_REC_STEP_SLEEP``: seconds to pause after each optimizer step (0 by default).

    It changes no result, only the pace, so a demo or an interruption test can kill a flow's
    worker while it is really mid-training; it is not part of the config because resuming
    with another pace must still match the checkpoint.
    """
    raw = os.environ.get("LITE_REC_STEP_SLEEP", "0") or "0"
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"LITE_REC_STEP_SLEEP={raw!r}: expected a number of seconds") from None
    if value < 0:
        raise ValueError(f"LITE_REC_STEP_SLEEP={raw!r}: must be >= 0")
    return value


def register(cfg: LiteRecConfig, result) -> "RegisteredVersion":  # noqa: F821 (mlflow imported lazily)
    """Bundle the trained model and log + register it in MLflow (alias `challenger`; `champion` if none)."""
    from lite_rec.items.cache import cache_dir_for
    from lite_rec.registry.publish import log_training_run
    from lite_rec.train.export import build_bundle

    bundle_dir = build_bundle(cfg, result.out_dir, result.out_dir / "bundle", overwrite=True)
    manifest = cache_dir_for(cfg) / "manifest.json"
    return log_training_run(cfg, result, bundle_dir, item_vectors_manifest=manifest if manifest.exists() else None,
                            run_name=result.out_dir.name)
