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
import logging
import os
import subprocess
from pathlib import Path

import torch
import yaml

from lite_rec.core.config import LiteRecConfig
from lite_rec.core.errors import ConfigError, LiteRecError
from lite_rec.core.io import write_text

log = logging.getLogger(__name__)
NPROC_ENV = "LITE_REC_NPROC_PER_NODE"  # the gpu pool's job variable: training processes on the worker's host


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


def train(cfg: LiteRecConfig, item_vectors: torch.Tensor | None, *, progress: bool = True, nproc_per_node: int = 1):
    """Train (or resume, or reload a finished run) under ``<runs_dir>/models/<run_name>``.

    ``nproc_per_node`` > 1: data-parallel over that many processes of this host (one per GPU with
    NCCL, or CPU processes with gloo), launched by :func:`train_distributed`; the run folder is
    the same, so a run killed with N processes resumes with N (or any other number).
    """
    out_dir = cfg.runs_dir / "models" / run_name(cfg)
    if nproc_per_node > 1:
        return train_distributed(cfg, item_vectors, out_dir, nproc_per_node, progress=progress)
    from lite_rec.data.sequences import read_sequences
    from lite_rec.train.run import train_model

    sequences = read_sequences(cfg.processed_dir / "sequences.parquet")
    return train_model(cfg, sequences, item_vectors, out_dir, progress=progress, step_sleep=step_sleep_from_env())


def nproc_from_env(value: int | None = None, batch_size: int | None = None) -> int:
    """Training processes: `value` when given, else ``LITE_REC_NPROC_PER_NODE`` (the gpu pool's job
    variable in prefect.yaml), else 1. With `batch_size` (the global ``train.batch_size``) a number
    of processes that cannot split it evenly fails here, before any work."""
    raw = value if value is not None else (os.environ.get(NPROC_ENV) or "1")
    try:
        n = int(raw)
    except ValueError:
        raise ConfigError(f"{NPROC_ENV}={raw!r}: expected a number of processes") from None
    if n < 1:
        raise ConfigError(f"nproc_per_node={n}: needs at least one process")
    if batch_size is not None:
        from lite_rec.train.distributed import Ranks, rank_batch

        rank_batch(batch_size, Ranks(0, n, 0))
    return n


def train_distributed(cfg: LiteRecConfig, item_vectors: torch.Tensor | None, out_dir: Path, nproc_per_node: int,
                      *, progress: bool = True):
    """Run ``torchrun --nproc-per-node N -m lite_rec.train.run`` on this host and read back the
    run folder that rank 0 wrote (:func:`lite_rec.train.run.load_result`).

    The ranks get the resolved config as a file (``<run>/launch.yaml``: every setting, nothing to
    re-resolve) and the item vectors from their cache folder (the tensor ``embed_items`` returned
    comes from there). torchrun dies with this process and its ranks with torchrun (Linux), so
    killing a flow leaves no rank behind; the checkpoints stay, and the next call resumes.
    """
    from lite_rec.pipeline.stack import free_port
    from lite_rec.train.checkpoint import RESUME_FILE
    from lite_rec.train.distributed import die_with_parent, torchrun_command
    from lite_rec.train.run import load_result

    out_dir = Path(out_dir).resolve()
    settings = cfg.model_dump(mode="json")
    profile = settings.pop("profile", None)  # recorded below, not merged a second time over the resolved values
    settings["data_dir"] = str(cfg.data_dir.resolve())
    launch = write_text(out_dir / "launch.yaml", yaml.safe_dump(settings, sort_keys=False))
    args = ["--processed-dir", str(cfg.processed_dir.resolve()), "--dataset", str(launch), "--out", str(out_dir)]
    if item_vectors is not None:
        from lite_rec.items.cache import VECTORS, cache_dir_for

        args += ["--item-vectors", str((cache_dir_for(cfg) / VECTORS).resolve())]
    if not progress:
        args.append("--no-progress")
    if step_sleep := step_sleep_from_env():
        args += ["--step-sleep", str(step_sleep)]
    if profile:
        args.append(f"profile={profile}")
    resumed = (out_dir / "checkpoints" / RESUME_FILE).is_file()
    # CPU ranks share the host's cores (torchrun would set 1 thread each, with a warning); GPU ranks need few
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // nproc_per_node))
    env = {**os.environ, "OMP_NUM_THREADS": threads}
    cmd = torchrun_command(nproc_per_node, args, master_port=free_port())
    log.info("training with %d processes: %s", nproc_per_node, " ".join(cmd))
    # rank 0's summary (JSON on stdout) stays out of the flow's output; progress and errors go to stderr
    done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                          preexec_fn=die_with_parent, check=False)
    if done.returncode != 0:
        raise LiteRecError(f"training with {nproc_per_node} processes failed (torchrun exit status {done.returncode}; "
                           f"the ranks' errors are above); its checkpoints stay in {out_dir / 'checkpoints'} and the "
                           "same command resumes from them")
    return load_result(out_dir, resumed=resumed)


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
