"""The training loop of both stages over one checkpointable state (used by ``train.py``).

Stage 1 trains the recommendation LLM and the head on frozen item vectors with the configured
strategy (``batches.py``), cross-entropy over all items (PAPER.md Eq. 6), AdamW (decay on
matrices only: not on biases, norm scales or item tables), linear warm-up then constant or
cosine lr, gradient clipping, bf16 autocast on CUDA. Validation Recall@10 (configured protocol)
after every ``eval_every`` epochs (and after a stage's last epoch) decides early stopping
(``patience`` evaluations without a strict improvement) and which weights are kept
(``checkpoints/best.safetensors``). Stage 2 (``finetune_epochs > 0``) restarts from the best
weights with the item vectors as a trainable parameter initialised from the cache, at
``finetune_lr`` (constant), and replaces the best weights only where validation improves on
stage 1.

With ``fit_on=train+valid`` (a refit) each user's validation item is one more training target, as
in the test input: validation would score items the model was trained on, so there is none. No
early stopping; each epoch's final weights replace the kept ones, so the last are kept.
Settings, the number of epochs included, come from a run validated with ``fit_on=train``. Why:
a model to serve should have seen every user's latest interaction; the test item stays held out
for ``lite-rec promote``. On ML-1m a refit tested the same as the validated runs
(docs/results.md, session 7): it is for freshness, not for the benchmark.

With ``ema_decay > 0`` an exponential moving average of the trainable weights (``ema.py``) is what
gets validated and kept as the best weights; the live weights keep training. Each stage starts
its own average.

A wall budget (``max_stage1_minutes``) ends stage 1 at the first epoch end past it, counting
training and validation time of every stage-1 epoch (also across resumes); the best weights so
far are kept and stage 2 runs as configured. Why a budget and not only ``max_epochs``: retraining
runs in a fixed nightly window, and lent GPU calls have a hard time limit; an epoch count cannot
promise either. A run resumed before its stage 1 ended may raise the budget (it is not part of
the run's fingerprint).

Resume: every ``checkpoint_every_steps`` optimizer steps and at each epoch end the whole state
(model, optimizer, scheduler, RNGs, stage/epoch/step, early-stopping state, history) is written
atomically. The batches of (stage, epoch) depend only on the seed and the RNGs are restored, so
a restart continues exactly where the interrupted run was.
"""

from __future__ import annotations

import contextlib
import functools
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
from lite_rec.model.rec_llm import IGNORE_INDEX, LiteRecModel
from lite_rec.train.batches import BatchMaker, epoch_plan, plan_onepass, shuffle_ties, tie_groups, tie_rng
from lite_rec.train.checkpoint import BEST_WEIGHTS, capture_rng, load_weights, restore_rng, save_resume, save_weights
from lite_rec.train.distill import (
    SoftTargets,
    load_teachers,
    soft_cross_entropy,
    teacher_fingerprint,
    teacher_soft_targets,
)
from lite_rec.train.ema import WeightEMA
from lite_rec.train.rdrop import symmetric_kl, twice

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


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float, schedule: str) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_ratio`` of the steps, then constant or cosine decay to 0."""
    warmup = int(round(warmup_ratio * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "cosine":
            progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_step(
    forward: Any, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
    items: torch.Tensor, targets: torch.Tensor, *, grad_clip: float, bf16: bool, seen: torch.Tensor | None = None,
    contexts: torch.Tensor | None = None, soft: tuple[torch.Tensor, torch.Tensor] | None = None,
    soft_weight: float = 0.0, soft_temperature: float = 1.0, rdrop_weight: float = 0.0,
) -> torch.Tensor:
    """One optimizer step on a batch; returns the detached loss (no host sync). ``seen``: the
    (B, N+1) items before each input window, for a softmax without the user's whole history;
    ``contexts``: the (B, L, C) context rows of the items, for a model that reads them (item_context.py);
    ``soft``: the teachers' (B, L, K) items and probabilities (``distill.SoftTargets.batch``), whose
    cross-entropy (at ``soft_temperature``) gets weight ``soft_weight`` and the hard targets' ``1 - soft_weight``;
    ``rdrop_weight`` > 0: the batch runs twice (two dropout masks) and their symmetric KL is added with
    this weight (``rdrop.py``)."""
    if rdrop_weight > 0:
        nxt = targets[..., 0] if targets.dim() == 3 else targets  # (B, L) or (B,): the next item
        supervised = nxt != IGNORE_INDEX
        items, targets, seen, contexts = twice(items), twice(targets), twice(seen), twice(contexts)  # (2B, ...)
        soft = None if soft is None else (twice(soft[0]), twice(soft[1]))
    with torch.autocast(items.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits, loss = forward(items, targets, seen=seen, contexts=contexts)
    if soft is not None:
        loss = (1.0 - soft_weight) * loss + soft_weight * soft_cross_entropy(logits, *soft, soft_temperature)
    if rdrop_weight > 0:
        loss = loss + rdrop_weight * symmetric_kl(logits, supervised)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
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
    refit = cfg.train.fit_on == "train+valid"
    if cfg.train.shuffle_ties or cfg.model.reads_timestamps:  # timestamps shape every batch
        data.update(flat_column(sequences, "ts", with_valid=refit).flat.tobytes())
    if cfg.model.ratings:
        data.update(flat_column(sequences, "rating", with_valid=refit).flat.tobytes())
    if cfg.model.query_time and not refit:  # the validation's query time (early stopping reads it)
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
    return {"model": model.model_dump(mode="json"), "train": kept, "eval": evaluation.model_dump(mode="json")}


class Trainer:
    """The loop of both stages over a mutable, checkpointable state ``self.s``."""

    def __init__(self, cfg: "LiteRecConfig", model: LiteRecModel, sequences: pd.DataFrame, device: torch.device,
                 ckpt_dir: Path, progress: bool, step_sleep: float) -> None:
        self.cfg, self.tc, self.model, self.device = cfg, cfg.train, model, device
        self.ckpt_dir, self.progress, self.step_sleep = ckpt_dir, progress, step_sleep
        # a refit learns from each user's test input (train + validation item); else from the train part
        refit = self.tc.fit_on == "train+valid"
        self.store = build_eval_set(sequences, "test").histories if refit else build_sequence_store(sequences["train_seq"])
        spec = model.spec
        contexts = item_contexts(sequences, **spec.context_features, with_valid=refit)  # (I, C) or None
        self.batches = BatchMaker(self.store, cfg.model.max_seq_len, device, future=self.tc.future_targets,
                                  contexts=contexts)
        self.ties = tie_groups(sequences, with_valid=refit) if self.tc.shuffle_ties else None  # (I,)
        self.valid_set = None if refit else build_eval_set(sequences, "valid", spec)
        self.bf16 = self.tc.bf16 and device.type == "cuda"
        compiled = torch.compile(model) if self.tc.compile else model
        self.forward = functools.partial(compiled, exclude_history=self.tc.loss_excludes_history,
                                         future_weight=self.tc.future_weight, item_dropout=self.tc.item_dropout)
        # what the user had before the window: the softmax leaves it out too (as the evaluation's mask),
        # or the history logit scores it (as evaluation and serving do, over the whole history)
        self.needs_seen = (self.tc.loss_excludes_history and self.tc.loss_history_scope == "user") or cfg.model.history_logit
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
            rng = capture_rng()
            tc, refit = self.tc, self.tc.fit_on == "train+valid"
            teachers = load_teachers(tc.distill_from, n_items=self.model.spec.n_items, dataset=self.cfg.dataset.name,
                                     refit=refit, device=self.device)
            plan = plan_onepass(self.store, self.cfg.model.max_seq_len, tc.onepass_stride)
            self.soft = teacher_soft_targets(
                teachers, self.store, plan, max_len=self.cfg.model.max_seq_len,
                contexts_of=lambda t: item_contexts(self.sequences, **t.spec.context_features, with_valid=refit),
                top_k=tc.distill_top_k, batch_size=tc.batch_size, device=self.device, bf16=self.bf16,
                progress=self.progress, temperature=tc.distill_temperature)
            restore_rng(rng)
        return self.soft

    def _steps_per_epoch(self, stage: int) -> int:
        plan, order = epoch_plan(self.tc.strategy, self.store, self.cfg.model.max_seq_len, seed=self.tc.seed,
                                 stage=stage, epoch=0, stride=self.tc.onepass_stride)
        return max(1, math.ceil(len(plan) / self.tc.batch_size))

    def _stage_epochs(self, stage: int) -> int:
        return self.tc.max_epochs if stage == 1 else self.tc.finetune_epochs

    def _build_optim(self, stage: int) -> None:
        lr = self.tc.lr if stage == 1 else self.tc.finetune_lr
        self.optimizer = make_optimizer(self.model, lr, self.tc.weight_decay, self.tc.adam_eps, self.device)
        total = self._stage_epochs(stage) * self._steps_per_epoch(stage)
        warmup, schedule = (self.tc.warmup_ratio, self.tc.lr_schedule) if stage == 1 else (0.0, "constant")
        self.scheduler = make_scheduler(self.optimizer, total, warmup, schedule)
        # a stage's average starts at its first weights, over the parameters it trains
        self.ema = WeightEMA(self.model, self.tc.ema_decay, self.tc.ema_warmup) if self.tc.ema_decay > 0 else None

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
        restore_rng(saved["rng"])

    def checkpoint(self) -> None:
        save_resume(self.ckpt_dir, {
            "state": self.s, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "rng": capture_rng(),
            **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
            **{k: self.s[k] for k in ("stage", "epoch", "step", "global_step", "done")},
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
                                 epoch=epoch, stride=tc.onepass_stride)
        self.batches.set_plan(plan, order)
        if self.ties is not None:
            self.batches.set_items(shuffle_ties(self.store.flat, self.ties, tie_rng(tc.seed, stage, epoch)))
        n_batches = self.batches.n_batches(tc.batch_size)
        soft = self._soft_targets() if tc.distill_from else None
        self.model.train()
        t0 = time.perf_counter()
        loss_sum = torch.tensor(s["loss_sum"], dtype=torch.float64, device=self.device)
        n_targets: Any = s["n_targets"]
        bar = tqdm(range(s["step"], n_batches), initial=s["step"], total=n_batches, disable=not self.progress,
                   desc=f"stage {stage} epoch {epoch + 1}/{self._stage_epochs(stage)}", leave=False)
        for step in bar:
            items, targets = self.batches.batch(step, tc.batch_size)
            seen = self.batches.seen_before(step, tc.batch_size, self.model.spec.n_items) if self.needs_seen else None
            contexts = self.batches.batch_contexts(step, tc.batch_size) if self.model.spec.uses_context else None
            batch_soft = soft.batch(self.batches.batch_windows(step, tc.batch_size), targets) if soft is not None else None
            loss = train_step(self.forward, self.model, self.optimizer, self.scheduler, items, targets,
                              grad_clip=tc.grad_clip, bf16=self.bf16, seen=seen, contexts=contexts,
                              soft=batch_soft, soft_weight=tc.distill_weight,
                              soft_temperature=tc.distill_temperature, rdrop_weight=tc.rdrop_weight)
            if self.ema is not None:
                self.ema.update()
            nxt = targets[..., 0] if targets.dim() == 3 else targets  # the next item of each sample/position
            count = (nxt != IGNORE_INDEX).sum() if nxt.dim() == 2 else nxt.numel()
            loss_sum += loss.double() * count
            n_targets = n_targets + count
            s["global_step"] += 1
            s["step"] = step + 1
            if self.progress and step % 50 == 0:
                bar.set_postfix(loss=f"{float(loss):.4f}")
            if s["global_step"] % tc.checkpoint_every_steps == 0 and step + 1 < n_batches:
                s.update(loss_sum=float(loss_sum), n_targets=int(n_targets),
                         epoch_seconds=s["epoch_seconds"] + time.perf_counter() - t0)
                t0 = time.perf_counter()
                self.checkpoint()
            if self.step_sleep:
                time.sleep(self.step_sleep)
        bar.close()
        seconds = s["epoch_seconds"] + time.perf_counter() - t0
        entry: dict[str, Any] = {
            "stage": stage, "epoch": epoch + 1, "loss": float(loss_sum) / max(int(n_targets), 1),
            "lr": float(self.scheduler.get_last_lr()[0]), "seconds": seconds, "steps": n_batches,
            "samples_per_s": plan.n_targets / max(seconds, 1e-9),
        }
        last = epoch + 1 >= self._stage_epochs(stage)
        if (epoch + 1) % tc.eval_every == 0 or last or self.valid_set is None:  # a refit keeps every epoch's end
            self._evaluate(entry)
        s["history"].append(entry)
        log.info("%s", epoch_line(entry, s["best"], self._stage_epochs(stage)))
        if stage == 1 and tc.max_stage1_minutes is not None and not s["stage_done"]:
            spent = sum(h["seconds"] + h.get("eval_seconds", 0.0) for h in s["history"] if h["stage"] == 1)
            if spent >= 60.0 * tc.max_stage1_minutes and epoch + 1 < self._stage_epochs(1):
                s["stage_done"] = s["budget_exhausted"] = True
        s.update(epoch=epoch + 1, step=0, loss_sum=0.0, n_targets=0, epoch_seconds=0.0)
        self.checkpoint()

    def _evaluate(self, entry: dict[str, Any]) -> None:
        s, ev = self.s, self.cfg.eval
        t0 = time.perf_counter()
        if self.valid_set is None:  # refit: nothing to validate on; the latest weights are the kept ones
            with self._averaged():
                save_weights(self.model, self.ckpt_dir / BEST_WEIGHTS)
            entry["eval_seconds"] = time.perf_counter() - t0
            s["best"] = {"metric": None, "stage": s["stage"], "epoch": s["epoch"] + 1}  # no validation score
            return
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
