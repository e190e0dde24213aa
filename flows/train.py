"""The `train` flow users run as `prefect deployment run train/<dataset>`.

ingest (skipped when its fingerprints match) -> embed (only new or changed items) -> train and
evaluate (resumes from checkpoints) -> register (alias challenger; champion when there is none).

Training runs in this process, or data-parallel in `nproc_per_node` torchrun ranks (one per GPU of
the worker's host; the gpu pool's job variable ``LITE_REC_NPROC_PER_NODE`` sets it for a deployment,
docs/scaling.md). `train.batch_size` stays the global batch either way.
"""

from __future__ import annotations

from typing import Any

from lite_rec_tasks.data import build_sequences_task, fetch_raw_task
from lite_rec_tasks.model import embed_task, register_task, train_task
from prefect import flow

from lite_rec.core.config import build_config
from lite_rec.pipeline.steps import nproc_from_env
from lite_rec.train.distill import check_teachers


@flow(name="train", log_prints=True)
def train_flow(
    dataset: str = "ml-1m",
    profile: str | None = None,
    overrides: dict[str, Any] | None = None,
    register_model: bool = True,
    progress: bool = True,
    nproc_per_node: int | None = None,
) -> dict[str, Any]:
    """`progress` only switches the progress bars of the data stage, item encoding and training
    (off for logs that a scheduler collects); it never changes a result. `nproc_per_node`: training
    processes on this host (None: the ``LITE_REC_NPROC_PER_NODE`` job variable, else 1)."""
    cfg = build_config(dataset, overrides, profile=profile)  # invalid parameters fail here, before any work
    nproc = nproc_from_env(nproc_per_node, cfg.train.batch_size)
    check_teachers(cfg.train.distill_from, cfg.dataset.name)  # a missing teacher fails now, not after ingest and embed
    build_sequences_task(cfg, fetch_raw_task(cfg, progress=progress), progress=progress)
    result = train_task(cfg, embed_task(cfg, progress=progress), progress=progress, nproc_per_node=nproc)
    summary: dict[str, Any] = {"dataset": cfg.dataset.name, "model_dir": str(result.out_dir), "resumed": result.resumed,
                               "metrics": {k: v for k, v in result.metrics.items() if k.startswith("test_")}}
    for key in ("history_logit", "distill_top_k_mass"):  # what the model learned / how much of its teachers it saw
        if key in result.metrics:
            summary[key] = result.metrics[key]
    if register_model:
        version = register_task(cfg, result)
        summary.update(model_uri=version.model_uri, aliases=list(version.aliases))
    print(summary)
    return summary
