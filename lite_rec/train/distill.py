"""Soft targets from trained teacher models: distilling an ensemble into one model (``train.distill_from``).

Why: on ML-1m three models of one recipe, averaged, rank better than any one of them (mean
probability: +0.004 R@10 / +0.003 N@10 over their mean, docs/results.md), but an
ensemble costs its size in every request. Training one model to also match the ensemble's
distribution over the next item (Hinton et al., 2015, "Distilling the knowledge in a neural
network") is the usual way to keep that gain at one model's serving cost. The loss of a position
becomes ``(1 - w) * CE(target) + w * CE(teachers' distribution)`` (``soft_cross_entropy``).

How, and why this way:

- Teachers score each one-pass window once, before training, not in every step: the windows of
  ``plan_onepass`` are the same in every epoch and both stages (only their order changes), so one
  forward pass of each teacher over the data gives every target it will ever be asked for.
  Teachers in the step would cost a forward pass each per step (three teachers: about twice the
  step time).
- Per supervised position only the ``top_k`` items of the teachers' mean probability are kept,
  renormalised to sum to 1: the dense table would be positions x (N+1) floats (ML-1m: 981k x
  3,417 = 13 GB); the top 128 (the default) take 0.75 GB (item_idx int32 + probability fp16), and
  ``SoftTargets.coverage`` says how much of the teachers' mass they hold.
- The teachers' distribution leaves out the items the user already has (the position's prefix
  and the items before the window, ``scoring.mask_history``), as the evaluation's masked ranking
  does, without keeping the target (a teacher must not know it): the student should not learn to
  recommend them. The hard-label term still teaches a repeat when one is the target.
- Teachers read their own inputs (a teacher with ``model.time_gaps`` gets its context rows, a
  student without them does not), so a servable student can learn from teachers that read the
  time of each item.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from lite_rec.core.errors import DataError
from lite_rec.data.sequences import SequenceStore
from lite_rec.model.rec_llm import LiteRecModel
from lite_rec.model.scoring import IGNORE_INDEX, mask_history
from lite_rec.train.batches import BatchMaker, SamplePlan
from lite_rec.train.checkpoint import MODEL_META, MODEL_WEIGHTS, load_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SoftTargets:
    """The teachers' top-K next items of every supervised position of one onepass plan.

    Rows are the supervised positions in plan order, each window's positions in order; the row of
    position p of window w is ``first_row[w] + p``.
    """

    items: torch.Tensor  # (P, K) int32 item_idx, most probable first
    probs: torch.Tensor  # (P, K) float16, the teachers' mean probability renormalised over the K items
    first_row: torch.Tensor  # (S,) int64: row of window w's position 0 (rows before its first supervised one are never read)
    coverage: float  # mean teacher probability mass inside the K items, before renormalising
    seconds: float = 0.0  # wall time of scoring them (every teacher over every window)

    def batch(self, windows: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Soft targets of a batch of windows: (B,) plan indices, (B, L) targets (IGNORE_INDEX where
        unsupervised) -> items (B, L, K) int64 and probabilities (B, L, K) float32 (zeros where
        unsupervised)."""
        supervised = targets != IGNORE_INDEX  # (B, L)
        rows = self.first_row[windows][:, None] + torch.arange(targets.shape[1], device=targets.device)  # (B, L)
        rows = torch.where(supervised, rows, 0)
        items = self.items[rows].long()  # (B, L, K)
        probs = torch.where(supervised[..., None], self.probs[rows].float(), 0.0)  # (B, L, K)
        return items, probs


def soft_cross_entropy(logits: torch.Tensor, items: torch.Tensor, probs: torch.Tensor,
                       temperature: float = 1.0) -> torch.Tensor:
    """Mean over positions with soft targets of -T^2 sum_k probs[k] * log softmax(logits / T)[items[k]].

    logits (B, L, N+1); items, probs (B, L, K) (``SoftTargets.batch``, scored at the same T). The
    T^2 keeps the term's gradient on the logits about as large at any T (Hinton et al., section 2),
    so ``train.distill_weight`` means the same share at every temperature. An item whose logit is
    -inf (the padding column) is skipped, not an infinite loss.
    """
    logits = logits.float()  # (B, L, N+1)
    if temperature != 1.0:  # not a no-op division at T = 1: the copy would cost a (B, L, N+1) tensor per step
        logits = logits / temperature  # -inf stays -inf
    logq = logits.gather(-1, items) - torch.logsumexp(logits, dim=-1, keepdim=True)  # (B, L, K)
    use = (probs > 0) & torch.isfinite(logq)  # (B, L, K)
    per_position = -(logq.masked_fill(~use, 0.0) * probs).sum(-1)  # (B, L)
    return temperature**2 * per_position.sum() / (probs.sum(-1) > 0).sum().clamp(min=1)


def check_teachers(dirs: Sequence[str | Path], dataset: str) -> list[dict]:
    """Each teacher folder's ``model.json``, after checking that the folder holds a finished model
    trained on ``dataset``; a clear error naming the folder otherwise. Cheap (no weights read), so
    the ``train`` flow runs it before any data or encoding work."""
    metas = []
    for d in map(Path, dirs):
        where = f"train.distill_from: {d}"
        if not (d / MODEL_META).is_file() or not (d / MODEL_WEIGHTS).is_file():
            raise DataError(f"{where}: no {MODEL_META} and {MODEL_WEIGHTS} (expected the folder of a finished training run)")
        try:
            meta = json.loads((d / MODEL_META).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"{where}: {MODEL_META} is not readable JSON ({exc})") from None
        trained_on = (meta.get("config") or {}).get("dataset", {}).get("name")
        if trained_on is not None and trained_on != dataset:
            raise DataError(f"{where}: the teacher was trained on {trained_on!r}, this run is {dataset!r}")
        metas.append(meta)
    return metas


def teacher_fingerprint(dirs: Sequence[str | Path], dataset: str) -> str:
    """sha256 over the teachers' weight files, in order: a resumed run must distill from the same ones."""
    check_teachers(dirs, dataset)
    digest = hashlib.sha256()
    for d in dirs:
        digest.update(hashlib.sha256((Path(d) / MODEL_WEIGHTS).read_bytes()).digest())
    return digest.hexdigest()


def load_teachers(dirs: Sequence[str | Path], *, n_items: int, dataset: str,
                  device: torch.device) -> list[LiteRecModel]:
    """Load and check each teacher: a finished model of this dataset's items, causal (one-pass)."""
    check_teachers(dirs, dataset)
    teachers = []
    for d in map(Path, dirs):
        where = f"train.distill_from: {d}"
        try:
            teacher, _ = load_model(d, device)
        except ValueError as exc:  # a malformed or outdated spec
            raise DataError(f"{where}: {exc}") from None
        if teacher.spec.n_items != n_items:
            raise DataError(f"{where}: the teacher scores {teacher.spec.n_items} items, this run's data has {n_items}")
        if not teacher.spec.causal:
            raise DataError(f"{where}: the teacher was not trained one-pass (causal); it cannot score every "
                            "position of a window in one pass")
        teachers.append(teacher)
    return teachers


@torch.no_grad()
def teacher_soft_targets(
    teachers: Sequence[LiteRecModel], store: SequenceStore, plan: SamplePlan, *, max_len: int,
    contexts_of: Callable[[LiteRecModel], np.ndarray | None], top_k: int, batch_size: int,
    device: torch.device, bf16: bool, progress: bool = False, temperature: float = 1.0,
) -> SoftTargets:
    """Score every window of ``plan`` (a onepass plan over ``store``) with every teacher and keep,
    per supervised position, the top ``top_k`` items of their mean probability (module docstring),
    each teacher's probability taken at ``temperature`` (softmax of its logits / T).

    ``contexts_of(teacher)`` gives the (I, C) context rows that teacher reads (``batches.item_contexts``
    with its ``spec.config.context_features``), or None.
    """
    if plan.sup_start is None or plan.first is None:
        raise ValueError("teacher_soft_targets needs a onepass plan (windows with supervised starts and user offsets)")
    t0 = time.perf_counter()
    n_items = teachers[0].spec.n_items
    k = min(top_k, n_items)
    identity = np.arange(len(plan))
    # one batch maker per distinct input context (teachers of one recipe share it); the first also
    # gives every teacher the same items, targets and seen items of each step
    reads_of = [tuple(t.spec.config.context_features.items()) if t.spec.config.uses_context else () for t in teachers]
    makers: dict[tuple, BatchMaker] = {}
    for teacher, reads in zip(teachers, reads_of, strict=True):
        if reads not in makers:
            makers[reads] = BatchMaker(store, max_len, device, contexts=contexts_of(teacher) if reads else None)
            makers[reads].set_plan(plan, identity)
    base = next(iter(makers.values()))
    for teacher in teachers:
        teacher.eval()
    items_out, probs_out, mass = [], [], []
    for step in tqdm(range(base.n_batches(batch_size)), desc="teacher targets", disable=not progress, leave=False):
        items, targets = base.batch(step, batch_size)  # (B, L), (B, L)
        seen = base.seen_before(step, batch_size, n_items)  # (B, N+1)
        contexts = {reads: maker.batch_contexts(step, batch_size) for reads, maker in makers.items() if reads}  # (B, L, C)
        total = None
        for teacher, reads in zip(teachers, reads_of, strict=True):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits, _ = teacher(items, targets, seen=seen, contexts=contexts.get(reads))  # (B, L, N+1)
            logits = mask_history(logits.float(), items, seen)
            p = torch.softmax(logits / temperature if temperature != 1.0 else logits, dim=-1)  # (B, L, N+1)
            total = p if total is None else total + p
        mean = total / len(teachers)  # (B, L, N+1)
        top_p, top_i = mean.topk(k, dim=-1)  # (B, L, K)
        supervised = targets != IGNORE_INDEX  # (B, L)
        kept = top_p[supervised]  # (P_b, K), window-major, positions in order
        mass.append(kept.sum(-1))
        probs_out.append((kept / kept.sum(-1, keepdim=True).clamp(min=1e-12)).half())
        items_out.append(top_i[supervised].int())
    window_offset = plan.sup_start - plan.start  # (S,) first supervised position of each window
    counts = plan.end - plan.sup_start  # (S,) supervised positions of each window
    first_row = np.concatenate([[0], np.cumsum(counts)[:-1]]) - window_offset
    coverage = float(torch.cat(mass).mean()) if mass else 0.0  # one host sync, at the end
    seconds = time.perf_counter() - t0
    log.info("teacher targets: %d positions from %d teachers in %.1f s; the top %d items hold %.1f%% of their probability",
             int(counts.sum()), len(teachers), seconds, k, 100 * coverage)
    return SoftTargets(items=torch.cat(items_out), probs=torch.cat(probs_out),
                       first_row=torch.as_tensor(first_row, dtype=torch.int64, device=device), coverage=coverage,
                       seconds=seconds)
