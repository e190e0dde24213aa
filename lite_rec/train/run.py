"""Training entry points: ``train_model(...)`` and ``python -m lite_rec.train.run`` (the paper's "Training").

Why a standalone entry point: the GPU workers that train real models have torch,
transformers, pandas, pyarrow and safetensors, not the pipeline's duckdb, prefect, mlflow or
great-expectations. Training therefore needs only the data stage's ``sequences.parquet`` and an
item-vector file; nothing here (or in the modules it imports) imports those libraries. The loop
itself, its two stages, early stopping and checkpoints live in ``trainer.py``.

    python -m lite_rec.train.run --processed-dir data/processed/ml-1m \
        --item-vectors data/runs/ml-1m/item_vectors/<encoder>/vectors.safetensors \
        --out data/runs/ml-1m/models/text-onepass --profile paper train.strategy=onepass

Re-running the same command with the same ``--out`` resumes an interrupted run from its last
checkpoint and reaches the same result (exact on CPU in fp32; tolerance 1e-5 documented); a
finished run is reloaded and re-evaluated, not retrained.

Data-parallel on N GPUs of one host (NCCL; gloo for N CPU processes), ``train.batch_size`` being
the global batch (``distributed.py`` says what N changes):

    torchrun --nproc-per-node 4 -m lite_rec.train.run --processed-dir data/processed/ml-1m \
        --item-vectors ... --out data/runs/ml-1m/models/text-onepass --profile gpu

Rank 0 validates, writes checkpoints and the model folder and prints the summary.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from lite_rec.core.errors import CacheMismatch, DataError, LiteRecError
from lite_rec.data.sequences import check_sequences, read_sequences
from lite_rec.eval.evaluate import build_eval_set, evaluate_model
from lite_rec.model.rec_llm import LiteRecModel, build_model
from lite_rec.train import distributed
from lite_rec.train.checkpoint import (
    BEST_WEIGHTS,
    MODEL_META,
    RESUME_FILE,
    RESUME_SUMMARY,
    check_fingerprint,
    load_model,
    load_resume,
    load_weights,
    save_model,
    seed_everything,
    write_json,
)
from lite_rec.train.trainer import Trainer, fingerprint_defaults, n_items_of, resolve_device, run_fingerprint

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from lite_rec.core.config import LiteRecConfig


@dataclass
class TrainResult:
    model: LiteRecModel  # best weights, eval mode
    metrics: dict[str, float]  # valid_* / test_* (both protocols), best_*, epochs_run, train_seconds
    history: list[dict[str, Any]]  # one entry per epoch: stage, epoch, loss, lr, seconds, samples_per_s, valid_*
    backbone_init: str  # "pretrained ..." or "random init (why)": tag the run with it
    stopped_early: bool
    budget_exhausted: bool  # stage 1 ended at train.max_stage1_minutes, not by early stopping or max_epochs
    resumed: bool  # this call continued a checkpoint
    out_dir: Path  # holds model.safetensors, model.json, metrics.json, history.json, checkpoints/


def train_model(
    cfg: "LiteRecConfig",
    sequences: pd.DataFrame,
    item_vectors: torch.Tensor | None,
    out_dir: Path | str,
    *,
    progress: bool = True,
    step_sleep: float = 0.0,
) -> TrainResult:
    """Train (or resume, or just reload when finished) one model; write it and its metrics.

    `sequences` has the columns of ``sequences.parquet``; `item_vectors` is (N+1, D) with row 0
    = zeros (None only for ``model.item_repr=id``). `step_sleep` (seconds after each optimizer
    step) only slows the loop down, for demos and interruption tests. Outputs in `out_dir`:
    ``model.safetensors`` + ``model.json`` (best weights, spec with the model's settings, the rest
    of the config, backbone init),
    ``metrics.json``, ``history.json`` and ``checkpoints/``.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every rank calls this; the process group is joined
    here (``distributed.setup``; leave it with ``distributed.teardown()``). Only rank 0 evaluates
    and writes; the other ranks return a result without metrics.
    """
    tc, out_dir = cfg.train, Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    n_items = n_items_of(sequences, item_vectors)
    check_sequences(sequences, n_items)
    ranks, device = distributed.setup(resolve_device(tc.device))
    distributed.rank_batch(tc.batch_size, ranks)  # a global batch that N processes cannot split fails now
    threads = torch.get_num_threads()
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    try:
        seed_everything(tc.seed)
        model, backbone_init = build_model(cfg.model, n_items, item_vectors, causal=tc.strategy == "onepass")
        model.to(device)
        if ranks.rank:  # same initial weights on every rank, its own dropout masks
            torch.manual_seed(distributed.rank_seed(tc.seed, ranks.rank))
        trainer = Trainer(cfg, model, sequences, device, ckpt_dir, progress, step_sleep, ranks)
        fingerprint = run_fingerprint(cfg, sequences, item_vectors)
        saved = load_resume(ckpt_dir)
        _check_same_checkpoint(saved, ckpt_dir, ranks)
        if saved is not None:
            check_fingerprint(saved["state"]["fingerprint"], fingerprint, ckpt_dir / RESUME_FILE, fingerprint_defaults(cfg))
            trainer.restore(saved)
            backbone_init = trainer.s["backbone_init"]
            where = "finished; reloading its best weights" if saved["done"] else (
                f"stage {saved['stage']}, epoch {saved['epoch'] + 1}, step {saved['step']} (global step {saved['global_step']})")
            if ranks.main:
                log.info("resuming %s from its checkpoint: %s", out_dir, where)
        else:
            trainer.fresh(fingerprint, backbone_init)
            trainer.checkpoint()
        trainer.run()
        s = trainer.s
        if not ranks.main:  # rank 0 evaluates and writes the model folder
            return TrainResult(model=model.eval(), metrics={}, history=list(s["history"]), backbone_init=backbone_init,
                               stopped_early=bool(s["stopped_early"]), budget_exhausted=bool(s["budget_exhausted"]),
                               resumed=saved is not None, out_dir=out_dir)

        load_weights(model, ckpt_dir / BEST_WEIGHTS)
        ev = cfg.eval
        metrics: dict[str, float] = {}
        for split in ("valid", "test"):
            eval_set = build_eval_set(sequences, split, model.spec)
            metrics.update(evaluate_model(model, eval_set, ks=ev.ks, batch_size=ev.batch_size,
                                          exclude_history=ev.exclude_history, device=device, bf16=trainer.bf16,
                                          progress=progress))
        metrics.update(best_stage=float(s["best"]["stage"]), best_epoch=float(s["best"]["epoch"]),
                       epochs_run=float(len(s["history"])), train_seconds=sum(h["seconds"] for h in s["history"]))
        if model.spec.config.history_logit:  # what the model learned about coming back to items (model.history_logit)
            metrics["history_logit"] = float(model.history_logit().detach())
        if trainer.soft is not None:  # how much of the teachers' probability the kept top-k items held, and its cost
            metrics.update(distill_top_k_mass=trainer.soft.coverage, distill_seconds=trainer.soft.seconds)
        protocol = {"exclude_history": ev.exclude_history, "max_seq_len": cfg.model.max_seq_len, "ks": list(ev.ks),
                    "strategy": tc.strategy, "seed": tc.seed}
        # the model's settings are stored once, in the spec (spec.config); the config keeps every other section
        save_model(model, out_dir, {"backbone_init": backbone_init, "protocol": protocol, "best": s["best"],
                                    "config": cfg.model_dump(mode="json", exclude={"model"})})
        write_json(out_dir / "metrics.json", metrics)
        write_json(out_dir / "history.json", s["history"])
        return TrainResult(model=model.eval(), metrics=metrics, history=list(s["history"]), backbone_init=backbone_init,
                           stopped_early=bool(s["stopped_early"]),
                           budget_exhausted=bool(s.get("budget_exhausted", False)), resumed=saved is not None, out_dir=out_dir)
    finally:
        torch.set_num_threads(threads)


def _check_same_checkpoint(saved: dict[str, Any] | None, ckpt_dir: Path, ranks: distributed.Ranks) -> None:
    """Every rank must resume from the same position (the run folder on storage they all see)."""
    seen = distributed.gathered(None if saved is None else saved["global_step"], ranks)
    if len(set(seen)) > 1:
        raise CacheMismatch(f"{ckpt_dir}: the ranks see different checkpoints (global steps by rank: {seen}); the run "
                            "folder must be on storage that every rank sees")


def load_result(out_dir: Path | str, *, resumed: bool) -> TrainResult:
    """The :class:`TrainResult` of a finished run folder, read back from what rank 0 wrote (how the
    pipeline collects a run that ``torchrun`` trained in other processes)."""
    out_dir = Path(out_dir)
    missing = [n for n in ("metrics.json", "history.json", MODEL_META) if not (out_dir / n).is_file()]
    if missing:
        raise DataError(f"{out_dir}: the training run left no {', '.join(missing)}; it did not finish")
    model, meta = load_model(out_dir)
    summary = json.loads((out_dir / "checkpoints" / RESUME_SUMMARY).read_text(encoding="utf-8"))
    return TrainResult(model=model, metrics=json.loads((out_dir / "metrics.json").read_text(encoding="utf-8")),
                       history=json.loads((out_dir / "history.json").read_text(encoding="utf-8")),
                       backbone_init=meta["backbone_init"], stopped_early=bool(summary.get("stopped_early")),
                       budget_exhausted=bool(summary.get("budget_exhausted")), resumed=resumed, out_dir=out_dir)


def read_item_vectors(path: Path | str) -> torch.Tensor:
    """(N+1, D) float32 item vectors from a safetensors file (tensor ``vectors``, or its only
    tensor) or from an item-vector cache folder holding ``vectors.safetensors``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        path = path / "vectors.safetensors"
    if not path.is_file():
        raise DataError(f"{path}: item-vector file not found (run `lite-rec embed <dataset>` first)")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise DataError(f"{path}: not a readable safetensors file ({exc})") from None
    if "vectors" not in tensors and len(tensors) != 1:
        raise DataError(f"{path}: expected a tensor named 'vectors' (found {', '.join(sorted(tensors))})")
    vectors = tensors.get("vectors", next(iter(tensors.values())))
    if vectors.dim() != 2:
        raise DataError(f"{path}: item vectors must be 2-D (N+1, D); got shape {tuple(vectors.shape)}")
    return vectors.float()


HEADLINE = ("valid_recall_10", "valid_ndcg_10", "test_recall_10", "test_recall_20", "test_ndcg_10", "test_ndcg_20",
            "test_unmasked_recall_10", "test_unmasked_ndcg_10", "best_epoch", "epochs_run", "train_seconds")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lite_rec.train.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--processed-dir", type=Path, required=True, help="folder with sequences.parquet")
    parser.add_argument("--item-vectors", type=Path, default=None,
                        help="vectors.safetensors (N+1, D) or its cache folder; omit for model.item_repr=id")
    parser.add_argument("--out", type=Path, required=True, help="run folder: model, metrics, checkpoints (resumes)")
    parser.add_argument("--dataset", default=None, help="dataset config name or YAML (default: processed dir name)")
    parser.add_argument("--profile", default=None, help="configs/profiles/<name>.yaml, e.g. paper, cpu, smoke")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--step-sleep", type=float, default=0.0, help="seconds to sleep after each step (demos, kill tests)")
    parser.add_argument("overrides", nargs="*", help="config overrides: section.field=value, e.g. train.lr=1e-3")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from lite_rec.core.config import ConfigError, build_config  # pydantic + yaml: only the CLI needs them

    try:
        cfg = build_config(args.dataset or args.processed_dir.name, args.overrides, args.profile)
        sequences = read_sequences(args.processed_dir / "sequences.parquet")
        vectors = read_item_vectors(args.item_vectors) if args.item_vectors is not None else None
        result = train_model(cfg, sequences, vectors, args.out, progress=not args.no_progress, step_sleep=args.step_sleep)
    except (LiteRecError, ConfigError) as exc:  # under torchrun: this rank exits, torchrun stops the others
        print(f"error: {exc}", file=sys.stderr)
        return 2
    distributed.teardown()
    if not result.metrics:  # not rank 0
        return 0
    summary = {k: result.metrics[k] for k in HEADLINE if k in result.metrics}
    print(json.dumps({"out_dir": str(result.out_dir), "backbone_init": result.backbone_init,
                      "resumed": result.resumed, **summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
