"""What a training run records in MLflow: the whole config, its curves, its provenance.

Why all of it: a number in a table is only worth something with the protocol, data and code
that produced it (docs/design.md). So every run logs the full resolved config as params, one metric
point per epoch (loss, validation Recall/NDCG@10, learning rate, throughput), the final
validation and test metrics under both masking protocols, tags for protocol, data fingerprint,
encoder, backbone initialisation and git commit, and artifacts a reviewer can open without code:
the config JSON, data stats, Great Expectations results, PNG plots and the item-vector manifest.

Also here: which tracking store a config points at. ``tracking.tracking_uri`` wins, then
``MLFLOW_TRACKING_URI`` (``lite_rec.core.env.apply_local_defaults`` sets it), then the embedded
default, a sqlite file under ``<data_dir>/mlflow`` with artifacts beside it.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

import mlflow
from lite_rec.core.config import REPO_ROOT, LiteRecConfig
from lite_rec.registry.client import resolve_tracking_uri

if TYPE_CHECKING:
    from lite_rec.infer.bundle import Bundle
    from lite_rec.train.run import TrainResult

__all__ = [
    "ensure_experiment",
    "experiment_name",
    "git_commit",
    "log_run_contents",
    "plot_training",
]

EPOCH_KEYS = {"loss": "train_loss", "lr": "lr", "samples_per_s": "samples_per_s", "seconds": "epoch_seconds"}


def experiment_name(cfg: LiteRecConfig) -> str:
    """One experiment per dataset: ``tracking.experiment`` or ``lite-rec-<dataset>``."""
    return cfg.tracking.experiment or f"lite-rec-{cfg.dataset.name}"


def ensure_experiment(client: MlflowClient, cfg: LiteRecConfig) -> str:
    """The dataset's experiment id, created on first use (local stores keep artifacts in data_dir)."""
    name = experiment_name(cfg)
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        return found.experiment_id
    location = None
    if not resolve_tracking_uri(cfg).startswith(("http://", "https://", "databricks")):
        location = (cfg.data_dir / "mlflow" / "artifacts" / name).resolve().as_uri()
    return client.create_experiment(name, artifact_location=location, tags={"dataset": cfg.dataset.name})


def git_commit(repo: Path = REPO_ROOT) -> str:
    """HEAD of the working tree (``+dirty`` when it has changes), or ``unknown`` outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True,
                               text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


# ---------------------------------------------------------------------------------------------
# Plots (matplotlib's Agg backend: no display, same PNG bytes on a GPU worker or in CI)


def plot_training(history: list[dict[str, Any]], metrics: dict[str, float], out_dir: Path) -> list[Path]:
    """``training_curves.png`` (loss, learning rate) and ``validation_metrics.png`` per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = list(range(1, len(history) + 1))
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax_loss.plot(epochs, [h.get("loss", float("nan")) for h in history], marker="o")
    ax_loss.set(xlabel="epoch (all stages)", ylabel="cross-entropy (Eq. 6)", title="training loss")
    ax_lr.plot(epochs, [h.get("lr", float("nan")) for h in history], marker="o", color="tab:orange")
    ax_lr.set(xlabel="epoch (all stages)", ylabel="learning rate", title="learning rate")
    fig.tight_layout()
    curves = out_dir / "training_curves.png"
    fig.savefig(curves, dpi=90)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    keys = sorted({k for h in history for k in h if k.startswith(("valid_recall", "valid_ndcg"))})
    for key in keys:
        points = [(e, h[key]) for e, h in zip(epochs, history) if key in h]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=key)
    for key in ("test_recall_10", "test_ndcg_10"):
        if key in metrics:
            ax.axhline(metrics[key], linestyle="--", linewidth=1, color="grey")
            ax.annotate(f"{key} {metrics[key]:.4f}", (1, metrics[key]), fontsize=7)
    ax.set(xlabel="epoch (all stages)", ylabel="metric", title="validation metrics (full ranking)")
    if keys:
        ax.legend(fontsize=7)
    fig.tight_layout()
    panel = out_dir / "validation_metrics.png"
    fig.savefig(panel, dpi=90)
    plt.close(fig)
    return [curves, panel]


# ---------------------------------------------------------------------------------------------
# Run contents


def _epoch_metrics(history: list[dict[str, Any]]) -> list[Metric]:
    """One point per epoch; step = epoch number over both training stages."""
    out: list[Metric] = []
    now_ms = int(time.time() * 1000)
    for step, entry in enumerate(history, start=1):
        stamp = now_ms - 1000 * (len(history) - step)  # monotone; the history carries no clock times
        for key, value in entry.items():
            name = EPOCH_KEYS.get(key) or (key if key.startswith("valid_") else None)
            if name and isinstance(value, int | float):
                out.append(Metric(name, float(value), stamp, step))
    return out


def _tags(cfg: LiteRecConfig, result: "TrainResult", bundle: "Bundle", commit: str) -> dict[str, str]:
    protocol = {**bundle.protocol, "dataset": cfg.dataset.name}
    return {
        "dataset": cfg.dataset.name,
        "protocol": json.dumps(protocol, sort_keys=True),
        "protocol.exclude_history": str(protocol.get("exclude_history", cfg.eval.exclude_history)),
        "protocol.k_core": str(cfg.dataset.k_core),
        "protocol.max_seq_len": str(cfg.model.max_seq_len),
        "data_fingerprint": str(bundle.extra.get("data_fingerprint", "unknown")),
        "item_encoder": cfg.item_encoder.model if "text" in cfg.model.item_repr else "none (item_repr=id)",
        "item_repr": cfg.model.item_repr,
        "strategy": cfg.train.strategy,
        "git_commit": commit,
        "backbone": cfg.model.backbone,
        "backbone_init": result.backbone_init,
        "backbone_weights": "pretrained" if result.backbone_init.startswith("pretrained") else "random",
        "stopped_early": str(result.stopped_early),
        "budget_exhausted": str(result.budget_exhausted),
        "bundle_sha256": bundle.fingerprint,
        # the request fields the model reads besides item ids (ts, rating, request_time): what a client must send
        "context_fields": json.dumps(bundle.context_fields),
    }


def log_run_contents(
    client: MlflowClient,
    run_id: str,
    cfg: LiteRecConfig,
    result: "TrainResult",
    bundle: "Bundle",
    *,
    commit: str | None = None,
    item_vectors_manifest: Path | None = None,
) -> dict[str, str]:
    """Params, per-epoch and final metrics, tags and artifacts of one training run; returns the tags."""
    params = [mlflow.entities.Param(k, v[:6000]) for k, v in cfg.to_flat_dict().items()]
    tags = _tags(cfg, result, bundle, commit or git_commit())
    client.log_batch(run_id, params=params, tags=[mlflow.entities.RunTag(k, v) for k, v in tags.items()])
    final_step = len(result.history)
    finals = [Metric(k, float(v), int(time.time() * 1000), final_step) for k, v in result.metrics.items() if isinstance(v, int | float)]
    client.log_batch(run_id, metrics=_epoch_metrics(result.history) + finals)

    with tempfile.TemporaryDirectory(prefix="lite-rec-run-") as tmp:
        root = Path(tmp)
        (root / "config.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=2, sort_keys=True), encoding="utf-8")
        training = root / "training"
        training.mkdir()
        (training / "history.json").write_text(json.dumps(result.history, indent=2, default=str), encoding="utf-8")
        (training / "metrics.json").write_text(json.dumps(result.metrics, indent=2, sort_keys=True), encoding="utf-8")
        plot_training(result.history, result.metrics, root / "plots")
        client.log_artifacts(run_id, str(root))
    processed = cfg.processed_dir
    for name in ("stats.json", "manifest.json"):
        if (processed / name).exists():
            client.log_artifact(run_id, str(processed / name), artifact_path="data")
    if (processed / "validation").is_dir():
        client.log_artifacts(run_id, str(processed / "validation"), artifact_path="data/validation")
    if item_vectors_manifest is None and "text" in cfg.model.item_repr:
        from lite_rec.items.cache import MANIFEST, cache_dir_for

        item_vectors_manifest = cache_dir_for(cfg) / MANIFEST
    if item_vectors_manifest is not None and item_vectors_manifest.exists():
        client.log_artifact(run_id, str(item_vectors_manifest), artifact_path="item_vectors")
    return tags
