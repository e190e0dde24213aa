"""The training loop of both stages over one checkpointable state (used by ``run.py``).

Stage 1 trains the recommendation LLM and the head on frozen item vectors with the configured
strategy (``batches.py``), cross-entropy over all items (Eq. 6 of the paper; or, with
``train.loss=sampled``, over in-batch and sampled negatives: ``losses.py``), AdamW (decay on
matrices only: not on biases, norm scales or item tables), linear warm-up then a constant lr,
gradient clipping, bf16 autocast on CUDA. Validation Recall@10 (configured protocol) after every
``eval_every`` epochs (and after a stage's last epoch) decides early stopping (``patience``
evaluations without a strict improvement) and which weights are kept
(``checkpoints/best.safetensors``). Stage 2 (``finetune_epochs > 0``) restarts from the best
weights with the item vectors as a trainable parameter initialised from the cache, at
``finetune_lr`` (constant), and replaces the best weights only where validation improves on
stage 1.

With ``ema_decay > 0`` an exponential moving average of the trainable weights (``ema.py``) is what
gets validated and kept as the best weights; the live weights keep training. Each stage starts
its own average.

A wall budget (``max_stage1_minutes``) ends stage 1 at the first epoch end past it, counting
training and validation time of every stage-1 epoch (also across resumes); the best weights so
far are kept and stage 2 runs as configured. Why a budget and not only ``max_epochs``: retraining
runs in a fixed nightly window, and GPU jobs often have a hard time limit; an epoch count cannot
promise either. A run resumed before its stage 1 ended may raise the budget (it is not part of
the run's fingerprint).

Resume: every ``checkpoint_every_steps`` optimizer steps and at each epoch end the whole state
(model, optimizer, scheduler, RNGs, stage/epoch/step, early-stopping state, history) is written
atomically. The batches of (stage, epoch) depend only on the seed and the RNGs are restored, so
a restart continues exactly where the interrupted run was.

Several processes (``torchrun``, ``distributed.py``): each rank trains on its part of every global
batch through DistributedDataParallel; validation, early stopping, best weights, checkpoints and the
EMA are rank 0's, which broadcasts the run's state after each epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from lite_rec.core import devices
from lite_rec.core.errors import LiteRecError
from lite_rec.data.sequences import build_sequence_store, flat_column
from lite_rec.eval.evaluate import build_eval_set, evaluate_model
from lite_rec.model.context import item_contexts
from lite_rec.model.rec_llm import LiteRecModel
from lite_rec.model.scoring import IGNORE_INDEX
from lite_rec.train import distributed
from lite_rec.train.batches import BatchMaker, epoch_plan, plan_onepass
from lite_rec.train.checkpoint import BEST_WEIGHTS, capture_rng, load_weights, restore_rng, save_resume, save_weights
from lite_rec.train.distill import (
    SoftTargets,
    load_teachers,
    soft_cross_entropy,
    teacher_fingerprint,
    teacher_soft_targets,
)
from lite_rec.train.distributed import SINGLE, Ranks
from lite_rec.train.ema import WeightEMA
from lite_rec.train.losses import sampled_forward

if TYPE_CHECKING:
    from lite_rec.core.config import LiteRecConfig

log = logging.getLogger(__name__)
# may change on resume (distill_from: the teachers' folders may move; their weights are fingerprinted instead)
RUNTIME_ONLY = ("device", "compile", "num_threads", "checkpoint_every_steps", "max_stage1_minutes", "distill_from")
STOP_METRIC = "valid_recall_10"


def resolve_device(name: str) -> torch.device:
    """``train.device`` as a torch device (``auto`` -> CUDA when available, else CPU)."""
    return devices.resolve_device(name, field="train.device", error=LiteRecError)


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, eps: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW; weight decay on weight matrices only (biases, norm scales and item tables are exempt)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            exempt = p.dim() < 2 or name in ("item_vectors", "item_embedding.weight")
            (no_decay if exempt else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, eps=eps, fused=device.type == "cuda")


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_ratio`` of the steps, then a constant lr (a cosine decay to 0
    measured worse on ML-1m; the EMA of the weights removes the noise a decay would)."""
    warmup = int(round(warmup_ratio * total_steps))

    def factor(step: int) -> float:
        return (step + 1) / warmup if step < warmup else 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_step(
    forward: Any, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
    items: torch.Tensor, targets: torch.Tensor, *, grad_clip: float, bf16: bool, seen: torch.Tensor | None = None,
    contexts: torch.Tensor | None = None, soft: tuple[torch.Tensor, torch.Tensor] | None = None,
    soft_weight: float = 0.0, soft_temperature: float = 1.0, loss_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """One optimizer step on a batch; returns the detached loss (no host sync). ``seen``: the
    (B, N+1) items before each input window, for a model with a history logit;
    ``contexts``: the (B, L, C) context rows of the items, for a model that reads them (model/context.py);
    ``soft``: the teachers' (B, L, K) items and probabilities (``distill.SoftTargets.batch``), whose
    cross-entropy (at ``soft_temperature``) gets weight ``soft_weight`` and the hard targets' ``1 - soft_weight``;
    ``loss_weight``: a factor on the loss that is differentiated, not on the one returned (a DDP rank's
    share of the global batch's targets, ``distributed.loss_weight``)."""
    with torch.autocast(items.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits, loss = forward(items, targets, seen=seen, contexts=contexts)
    if soft is not None:
        loss = (1.0 - soft_weight) * loss + soft_weight * soft_cross_entropy(logits, *soft, soft_temperature)
    optimizer.zero_grad(set_to_none=True)
    (loss if loss_weight is None else loss * loss_weight).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()
    return loss.detach()


def epoch_line(entry: dict[str, Any], best: dict[str, Any], epochs: int) -> str:
    """One plain log line per epoch (for logs without progress bars, and for runs cut short)."""
    line = f"stage {entry['stage']} epoch {entry['epoch']}/{epochs}: loss {entry['loss']:.4f}, {entry['seconds']:.1f} s"
    if STOP_METRIC in entry:
        line += f", {STOP_METRIC} {entry[STOP_METRIC]:.4f} (best {best['metric']:.4f}, stage {best['stage']} epoch {best['epoch']})"
    return line


def n_items_of(sequences: pd.DataFrame, item_vectors: torch.Tensor | None) -> int:
    if item_vectors is not None:
        return int(item_vectors.shape[0]) - 1
    top = [max(s, default=0) for s in sequences["train_seq"]]
    return int(max([*top, sequences["valid_item_idx"].max(), sequences["test_item_idx"].max()]))


def run_fingerprint(cfg: "LiteRecConfig", sequences: pd.DataFrame, item_vectors: torch.Tensor | None) -> dict[str, Any]:
    """What a resume checkpoint must match: settings that change results, data and vectors."""
    data = hashlib.sha256()
    data.update(build_sequence_store(sequences["train_seq"]).flat.tobytes())
    for column in ("valid_item_idx", "test_item_idx"):
        data.update(sequences[column].to_numpy(np.int64).tobytes())
    if cfg.model.reads_timestamps:  # timestamps shape every batch
        data.update(flat_column(sequences, "ts").flat.tobytes())
    if cfg.model.ratings:
        data.update(flat_column(sequences, "rating").flat.tobytes())
    if cfg.model.query_time:  # the validation's query time (early stopping reads it)
        data.update(sequences["valid_ts"].to_numpy(np.int64).tobytes())
    vectors = "none" if item_vectors is None else hashlib.sha256(item_vectors.float().numpy().tobytes()).hexdigest()
    teachers = {"teachers_sha256": teacher_fingerprint(cfg.train.distill_from, cfg.dataset.name)} if cfg.train.distill_from else {}
    return {**_settings(cfg.model, cfg.train, cfg.eval),
            "sequences_sha256": data.hexdigest(), "item_vectors_sha256": vectors, **teachers}


def fingerprint_defaults(cfg: "LiteRecConfig") -> dict[str, Any]:
    """The settings part of a fingerprint at every field's default: what a checkpoint written
    before a setting existed implicitly ran with (``check_fingerprint``)."""
    return _settings(type(cfg.model)(), type(cfg.train)(), type(cfg.eval)())


def _settings(model: Any, train: Any, evaluation: Any) -> dict[str, Any]:
    kept = {k: v for k, v in train.model_dump(mode="json").items() if k not in RUNTIME_ONLY}
    return {"model": dataclasses.asdict(model), "train": kept, "eval": evaluation.model_dump(mode="json")}


class Trainer:
    """The loop of both stages over a mutable, checkpointable state ``self.s``."""

    def __init__(self, cfg: "LiteRecConfig", model: LiteRecModel, sequences: pd.DataFrame, device: torch.device,
                 ckpt_dir: Path, progress: bool, step_sleep: float, ranks: Ranks = SINGLE) -> None:
        self.cfg, self.tc, self.model, self.device, self.ranks = cfg, cfg.train, model, device, ranks
        self.ckpt_dir, self.progress, self.step_sleep = ckpt_dir, progress and ranks.main, step_sleep
        self.rank_batch = distributed.rank_batch(self.tc.batch_size, ranks)  # this process's part of a step's batch
        self.store = build_sequence_store(sequences["train_seq"])
        spec = model.spec
        contexts = item_contexts(sequences, **spec.config.context_features)  # (I, C) or None
        self.batches = BatchMaker(self.store, spec.config.max_seq_len, device, contexts=contexts)
        self.valid_set = build_eval_set(sequences, "valid", spec)
        self.bf16 = self.tc.bf16 and device.type == "cuda"
        self.forward = None if ranks.active else torch.compile(model) if self.tc.compile else model  # DDP: _build_optim
        if self.tc.loss == "sampled":  # same call, no (positions, N+1) logits (losses.py)
            self.forward = sampled_forward(model, self.store, self.tc, device, distributed=ranks.active)
        # what the user had before the window: the history logit scores it (as evaluation and serving
        # do, over the whole history)
        self.needs_seen = spec.config.history_logit
        self.s: dict[str, Any] = {}
        self.ema: WeightEMA | None = None
        self.sequences = sequences  # the teachers' context rows come from it (_soft_targets)
        self.soft: SoftTargets | None = None  # the teachers' targets, scored on the first epoch that needs them

    def _soft_targets(self) -> SoftTargets:
        """Load the teachers, score every window once (distill.py), and let the teachers go.

        The random state is put back afterwards: building a teacher draws initial weights, and a
        resumed run (which scores them on its first epoch, not the run's first) must draw the
        same dropout masks as an uninterrupted one.
        """
        if self.soft is None:
            rng = capture_rng(all_devices=not self.ranks.active)
            tc = self.tc
            teachers = load_teachers(tc.distill_from, n_items=self.model.spec.n_items, dataset=self.cfg.dataset.name,
                                     device=self.device)
            plan = plan_onepass(self.store, self.cfg.model.max_seq_len)
            self.soft = teacher_soft_targets(
                teachers, self.store, plan, max_len=self.cfg.model.max_seq_len,
                contexts_of=lambda t: item_contexts(self.sequences, **t.spec.config.context_features),
                top_k=tc.distill_top_k, batch_size=tc.batch_size, device=self.device, bf16=self.bf16,
                progress=self.progress, temperature=tc.distill_temperature)
            restore_rng(rng, all_devices=not self.ranks.active)
        return self.soft

    def _steps_per_epoch(self, stage: int) -> int:
        plan, order = epoch_plan(self.tc.strategy, self.store, self.cfg.model.max_seq_len, seed=self.tc.seed,
                                 stage=stage, epoch=0)
        return max(1, math.ceil(len(plan) / self.tc.batch_size))

    def _stage_epochs(self, stage: int) -> int:
        return self.tc.max_epochs if stage == 1 else self.tc.finetune_epochs

    def _build_optim(self, stage: int) -> None:
        lr = self.tc.lr if stage == 1 else self.tc.finetune_lr
        self.optimizer = make_optimizer(self.model, lr, self.tc.weight_decay, self.tc.adam_eps, self.device)
        total = self._stage_epochs(stage) * self._steps_per_epoch(stage)
        self.scheduler = make_scheduler(self.optimizer, total, self.tc.warmup_ratio if stage == 1 else 0.0)
        # a stage's average starts at its first weights, over the parameters it trains (rank 0's: it validates)
        self.ema = WeightEMA(self.model, self.tc.ema_decay) if self.tc.ema_decay > 0 and self.ranks.main else None
        if self.ranks.active:  # DDP registers the parameters that train now (stage 2 adds the item vectors)
            self.forward = self._ddp()

    def _ddp(self) -> Any:
        """The model inside DistributedDataParallel, which copies rank 0's weights to every rank.

        ``static_graph``: every step uses the same parameters, and some are never used (an HF
        encoder's token table: items come in as ``inputs_embeds``); DDP learns that once instead of
        searching the graph each step. Buffers are constants here: no broadcast before each forward.
        """
        import inspect

        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        # torch >= 2.13 names the forward buffer sync `forward_sync_buffers` (and warns on the old name)
        newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
        buffers = {"forward_sync_buffers" if newer else "broadcast_buffers": False}
        wrapped = DistributedDataParallel(self.model, device_ids=ids, static_graph=True, **buffers)
        return torch.compile(wrapped) if self.tc.compile else wrapped

    def _averaged(self) -> Any:
        """The weights that are validated and kept: the EMA when configured, else the live ones."""
        return self.ema.applied() if self.ema is not None else contextlib.nullcontext()

    def fresh(self, fingerprint: dict[str, Any], backbone_init: str) -> None:
        self.s = {"fingerprint": fingerprint, "backbone_init": backbone_init, "stage": 1, "epoch": 0, "step": 0,
                  "global_step": 0, "best": {"metric": -1.0, "stage": 0, "epoch": -1}, "bad_evals": 0,
                  "history": [], "loss_sum": 0.0, "n_targets": 0, "epoch_seconds": 0.0, "stage_done": False,
                  "stopped_early": False, "budget_exhausted": False, "done": False}
        self._build_optim(1)

    def restore(self, saved: dict[str, Any]) -> None:
        self.s = saved["state"]
        if self.s["stage"] == 2:
            self.model.unfreeze_item_vectors()
        self.model.load_state_dict(saved["model"])
        self._build_optim(self.s["stage"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(saved["ema"])
        rank, rngs = self.ranks.rank, saved.get("rank_rngs") or [saved["rng"]]
        if rank < len(rngs) and len(rngs) == self.ranks.world_size:
            restore_rng(rngs[rank], all_devices=not self.ranks.active)
        elif rank == 0:
            restore_rng(saved["rng"], all_devices=not self.ranks.active)
        else:  # resumed with more processes than wrote the checkpoint: fresh masks for this rank
            torch.manual_seed(distributed.rank_seed(self.tc.seed + self.s["global_step"], rank))

    def checkpoint(self) -> None:
        """Every rank calls it at the same points; rank 0 writes the state with every rank's random state."""
        rngs = distributed.gathered(capture_rng(all_devices=not self.ranks.active), self.ranks)
        if not self.ranks.main:
            return
        save_resume(self.ckpt_dir, {
            "state": self.s, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "rng": rngs[0], "world_size": self.ranks.world_size,
            **({"rank_rngs": rngs} if self.ranks.active else {}),
            **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
            **{k: self.s[k] for k in ("stage", "epoch", "step", "global_step", "done", "stopped_early", "budget_exhausted")},
        })

    def run(self) -> None:
        while not self.s["done"]:
            if self.s["stage_done"] or self.s["epoch"] >= self._stage_epochs(self.s["stage"]):
                self._finish_stage()
            else:
                self._run_epoch()

    def _finish_stage(self) -> None:
        if self.s["stage"] == 1 and self.tc.finetune_epochs > 0:
            load_weights(self.model, self.ckpt_dir / BEST_WEIGHTS)
            self.model.unfreeze_item_vectors()  # stage 2: item vectors trainable, from the cache
            self._build_optim(2)
            self.s.update(stage=2, epoch=0, step=0, bad_evals=0, stage_done=False)
        else:
            self.s["done"] = True
        self.checkpoint()

    def _run_epoch(self) -> None:
        s, tc = self.s, self.tc
        stage, epoch = s["stage"], s["epoch"]
        plan, order = epoch_plan(tc.strategy, self.store, self.cfg.model.max_seq_len, seed=tc.seed, stage=stage,
                                 epoch=epoch)
        shard = distributed.shard_order(order, tc.batch_size, self.ranks)  # the whole order with one process
        self.batches.set_plan(plan, shard)
        batch = self.rank_batch
        n_batches = -(-len(shard) // batch)  # = ceil(len(plan) / train.batch_size): the same on every rank
        soft = self._soft_targets() if tc.distill_from else None
        self.model.train()
        t0 = time.perf_counter()
        # this rank's sums; a resumed epoch's saved partial sums (over every rank) count once, on rank 0
        main = self.ranks.main
        loss_sum = torch.tensor(s["loss_sum"] if main else 0.0, dtype=torch.float64, device=self.device)
        n_targets: Any = s["n_targets"] if main else 0
        bar = tqdm(range(s["step"], n_batches), initial=s["step"], total=n_batches, disable=not self.progress,
                   desc=f"stage {stage} epoch {epoch + 1}/{self._stage_epochs(stage)}", leave=False)
        for step in bar:
            items, targets = self.batches.batch(step, batch)
            seen = self.batches.seen_before(step, batch, self.model.spec.n_items) if self.needs_seen else None
            contexts = self.batches.batch_contexts(step, batch) if self.model.spec.config.uses_context else None
            batch_soft = soft.batch(self.batches.batch_windows(step, batch), targets) if soft is not None else None
            count = (targets != IGNORE_INDEX).sum() if targets.dim() == 2 else targets.numel()
            weight = distributed.loss_weight(torch.as_tensor(count, device=self.device), self.ranks) if self.ranks.active else None
            loss = train_step(self.forward, self.model, self.optimizer, self.scheduler, items, targets,
                              grad_clip=tc.grad_clip, bf16=self.bf16, seen=seen, contexts=contexts,
                              soft=batch_soft, soft_weight=tc.distill_weight, soft_temperature=tc.distill_temperature,
                              loss_weight=weight)
            if self.ema is not None:
                self.ema.update()
            loss_sum += loss.double() * count
            n_targets = n_targets + count
            s["global_step"] += 1
            s["step"] = step + 1
            if self.progress and step % 50 == 0:
                bar.set_postfix(loss=f"{float(loss):.4f}")
            if s["global_step"] % tc.checkpoint_every_steps == 0 and step + 1 < n_batches:
                total_loss, total_targets = distributed.summed(self.ranks, loss_sum, n_targets)
                s.update(loss_sum=total_loss, n_targets=int(total_targets),
                         epoch_seconds=s["epoch_seconds"] + time.perf_counter() - t0)
                t0 = time.perf_counter()
                self.checkpoint()
            if self.step_sleep:
                time.sleep(self.step_sleep)
        bar.close()
        total_loss, total_targets = distributed.summed(self.ranks, loss_sum, n_targets)
        seconds = s["epoch_seconds"] + time.perf_counter() - t0
        entry: dict[str, Any] = {
            "stage": stage, "epoch": epoch + 1, "loss": total_loss / max(int(total_targets), 1),
            "lr": float(self.scheduler.get_last_lr()[0]), "seconds": seconds, "steps": n_batches,
            "samples_per_s": plan.n_targets / max(seconds, 1e-9),
        }
        if main:  # validation and every decision that follows from it are rank 0's
            self._end_epoch(entry)
        self.s = s = distributed.broadcast(s, self.ranks)
        s.update(epoch=epoch + 1, step=0, loss_sum=0.0, n_targets=0, epoch_seconds=0.0)
        self.checkpoint()

    def _end_epoch(self, entry: dict[str, Any]) -> None:
        """Validate when due, record the epoch, and end stage 1 when its wall budget is spent."""
        s, tc = self.s, self.tc
        stage, epoch = s["stage"], s["epoch"]
        if (epoch + 1) % tc.eval_every == 0 or epoch + 1 >= self._stage_epochs(stage):
            self._evaluate(entry)
        s["history"].append(entry)
        log.info("%s", epoch_line(entry, s["best"], self._stage_epochs(stage)))
        if stage == 1 and tc.max_stage1_minutes is not None and not s["stage_done"]:
            spent = sum(h["seconds"] + h.get("eval_seconds", 0.0) for h in s["history"] if h["stage"] == 1)
            if spent >= 60.0 * tc.max_stage1_minutes and epoch + 1 < self._stage_epochs(1):
                s["stage_done"] = s["budget_exhausted"] = True

    def _evaluate(self, entry: dict[str, Any]) -> None:
        s, ev = self.s, self.cfg.eval
        t0 = time.perf_counter()
        with self._averaged():
            metrics = evaluate_model(self.model, self.valid_set, ks=sorted({*ev.ks, 10}), batch_size=ev.batch_size,
                                     exclude_history=ev.exclude_history, device=self.device, bf16=self.bf16,
                                     progress=False)
            improved = metrics[STOP_METRIC] > s["best"]["metric"]
            if improved:
                save_weights(self.model, self.ckpt_dir / BEST_WEIGHTS)
        entry.update({k: v for k, v in metrics.items() if k.startswith(("valid_recall", "valid_ndcg"))})
        entry["eval_seconds"] = time.perf_counter() - t0
        if improved:
            s["best"] = {"metric": metrics[STOP_METRIC], "stage": s["stage"], "epoch": s["epoch"] + 1}
            s["bad_evals"] = 0
        else:
            s["bad_evals"] += 1
            if s["bad_evals"] >= self.tc.patience:
                s["stage_done"] = True
                s["stopped_early"] = s["stopped_early"] or s["stage"] == 1
