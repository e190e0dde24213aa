"""Training samples of the three strategies, as index plans over one flat array of items.

Why plans and not lists of samples: ML-1m's ``all`` strategy has ~1M samples per epoch. A sample
here is two offsets into the concatenation of every user's ``train_seq`` (``start``, ``end``: the
inputs are ``flat[start:end]``, the target ``flat[end]``), so a plan for an epoch is a few numpy
arrays, and a batch is gathered on the training device by one fancy-indexing op (no Python loop
per sample or per prefix).

Strategies (the paper's "Training" section; L = ``model.max_seq_len``):

- ``sampling``: per user and epoch, one contiguous segment of at most L + 1 training items: the
  target position e is drawn uniformly from 1..n-1, the inputs are the (at most L) items before it.
- ``all``: every prefix: for e = 1..n-1, inputs ``seq[max(0, e-L):e]``, target ``seq[e]``. Each
  target sees min(e, L) items of context, always the most recent ones.
- ``onepass``: the inputs 0..n-2 of a sequence are cut into consecutive windows of L items that
  never overlap; one causal pass over a window gives every position's next-item loss. Each
  target is supervised exactly once per epoch, so an epoch has the same n-1 targets per user as
  ``all``. The difference from ``all``: a target at window position j sees only the j+1 items
  since the window start, not the last L items (context lengths cycle 1..L), and attention is
  causal.

Order: every epoch's plan and shuffle come from ``numpy.random.default_rng([seed, stage, epoch])``,
so the batch at (stage, epoch, step) is a pure function of the seed: a run resumed mid-epoch
replays exactly the batches the interrupted run would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lite_rec.data.sequences import SequenceStore, with_pad_row
from lite_rec.model.scoring import IGNORE_INDEX

STRATEGIES = ("sampling", "all", "onepass")


@dataclass(frozen=True)
class SamplePlan:
    """Samples of one epoch: inputs ``flat[start:end]``; targets ``flat[end]`` or, for windows,
    ``flat[p + 1]`` for every input position p >= sup_start."""

    start: np.ndarray  # (S,) int64
    end: np.ndarray  # (S,) int64, exclusive
    sup_start: np.ndarray | None  # (S,) int64 for onepass windows, else None
    n_targets: int  # supervised targets in the plan (samples/s counts these)
    first: np.ndarray | None = None  # (S,) int64: flat index of the user's first item (items before ``start`` are seen)

    def __len__(self) -> int:
        return len(self.start)


def epoch_rng(seed: int, stage: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng([seed, stage, epoch])


def plan_all(store: SequenceStore, max_len: int) -> SamplePlan:
    n = store.lengths
    per_user = np.maximum(n - 1, 0)  # targets e = 1..n-1
    user = np.repeat(np.arange(len(n)), per_user)
    first = np.cumsum(per_user) - per_user
    e = np.arange(per_user.sum()) - np.repeat(first, per_user) + 1
    end = store.offsets[user] + e
    start = np.maximum(store.offsets[user], end - max_len)
    return SamplePlan(start, end, None, int(len(end)), first=store.offsets[user])


def plan_sampling(store: SequenceStore, max_len: int, rng: np.random.Generator) -> SamplePlan:
    n = store.lengths
    users = np.flatnonzero(n >= 2)
    e = rng.integers(1, n[users])  # uniform over 1..n-1 per user
    end = store.offsets[users] + e
    start = np.maximum(store.offsets[users], end - max_len)
    return SamplePlan(start, end, None, int(len(end)), first=store.offsets[users])


def plan_onepass(store: SequenceStore, max_len: int) -> SamplePlan:
    n_inputs = np.maximum(store.lengths - 1, 0)  # positions 0..n-2 have a next item
    windows = (n_inputs + max_len - 1) // max_len  # (U,) 0 for a user without a next item
    user = np.repeat(np.arange(len(n_inputs)), windows)
    j = np.arange(windows.sum()) - np.repeat(np.cumsum(windows) - windows, windows)  # window number in user
    off = store.offsets[user]
    start = off + j * max_len
    end = off + np.minimum((j + 1) * max_len, n_inputs[user])
    # every position of a window is supervised: windows never overlap
    return SamplePlan(start, end, start, int(n_inputs.sum()), first=off)


def epoch_plan(
    strategy: str, store: SequenceStore, max_len: int, *, seed: int, stage: int, epoch: int
) -> tuple[SamplePlan, np.ndarray]:
    """The epoch's samples and their shuffled order, both derived from (seed, stage, epoch) only."""
    rng = epoch_rng(seed, stage, epoch)
    if strategy == "sampling":
        plan = plan_sampling(store, max_len, rng)
    elif strategy == "all":
        plan = plan_all(store, max_len)
    elif strategy == "onepass":
        plan = plan_onepass(store, max_len)
    else:
        raise ValueError(f"train.strategy must be one of {STRATEGIES}; got {strategy!r}")
    return plan, rng.permutation(len(plan))


class BatchMaker:
    """Gathers (items (B, L), targets) batches of a plan on the training device."""

    def __init__(self, store: SequenceStore, max_len: int, device: torch.device | str = "cpu",
                 contexts: np.ndarray | None = None) -> None:
        """``contexts`` (I, C): the context row of every item of ``store`` (``context.item_contexts``)."""
        self.device = torch.device(device)
        self.max_len = max_len
        self.flat = torch.as_tensor(np.append(store.flat, 0), device=self.device)  # (I + 1,) sentinel at the end
        if contexts is not None and len(contexts) != len(store.flat):
            raise ValueError(f"BatchMaker: {len(contexts)} context rows for {len(store.flat)} items")
        # (I + 1, C) context row of each item (model/context.py), a zero row (padding) at the end; None = not used
        self.context_flat = None if contexts is None else torch.as_tensor(with_pad_row(contexts), device=self.device)
        self.arange = torch.arange(max_len, device=self.device)  # (L,)

    def set_plan(self, plan: SamplePlan, order: np.ndarray) -> None:
        """Upload one epoch's plan once, so each batch is an on-device slice (no host sync)."""
        perm = torch.as_tensor(order, device=self.device)
        self.windows = perm  # (S,) plan index of each sample, in batch order
        self.start = torch.as_tensor(plan.start, device=self.device)[perm]
        self.end = torch.as_tensor(plan.end, device=self.device)[perm]
        self.sup = None if plan.sup_start is None else torch.as_tensor(plan.sup_start, device=self.device)[perm]
        self.first = None if plan.first is None else torch.as_tensor(plan.first, device=self.device)[perm]
        # longest run of items before a window, from the host copy: a fixed width, no sync per batch
        self.max_before = 0 if plan.first is None or not len(plan) else max(int((plan.start - plan.first).max()), 0)
        self.n_samples = len(plan)

    def n_batches(self, batch_size: int) -> int:
        return (self.n_samples + batch_size - 1) // batch_size

    def batch(self, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded inputs (B, L) and targets: (B,) next items, or (B, L) for windows
        (IGNORE_INDEX at padding)."""
        sl = slice(step * batch_size, (step + 1) * batch_size)
        start, end = self.start[sl], self.end[sl]  # (B,)
        pos = start[:, None] + self.arange  # (B, L) offsets into flat
        real = pos < end[:, None]  # (B, L)
        last = self.flat.shape[0] - 1
        items = torch.where(real, self.flat[pos.clamp(max=last)], 0)  # (B, L)
        if self.sup is None:
            return items, self.flat[end]  # (B, L), (B,)
        nxt = self.flat[(pos + 1).clamp(max=last)]  # (B, L)
        supervised = real & (pos >= self.sup[sl][:, None])
        return items, torch.where(supervised, nxt, IGNORE_INDEX)  # (B, L), (B, L)

    def batch_windows(self, step: int, batch_size: int) -> torch.Tensor:
        """(B,) plan indices of ``batch(step, batch_size)``'s samples (what ``distill.SoftTargets`` is keyed by)."""
        return self.windows[step * batch_size:(step + 1) * batch_size]

    def batch_contexts(self, step: int, batch_size: int) -> torch.Tensor:
        """(B, L, C) context rows of ``batch(step, batch_size)``'s input items, zeros at padding."""
        if self.context_flat is None:
            raise ValueError("batch_contexts needs a BatchMaker built with contexts=")
        sl = slice(step * batch_size, (step + 1) * batch_size)
        pos = self.start[sl][:, None] + self.arange  # (B, L)
        real = pos < self.end[sl][:, None]
        return torch.where(real[..., None], self.context_flat[pos.clamp(max=self.context_flat.shape[0] - 1)], 0)

    def seen_before(self, step: int, batch_size: int, n_items: int) -> torch.Tensor:
        """(B, N+1) bool: the items each sample's user interacted with *before* its input window.

        Why: ``model.history_logit`` scores the user's whole history in training, as evaluation
        and serving do, not only the last ``max_seq_len`` items; distillation's teachers leave it
        out of their distribution. On ML-1m a third of the supervised positions sit in a later
        window of a user with more than 200 training items, where the input window alone misses
        hundreds of seen items. A mask over the catalogue, not a list of items: its shape is
        fixed, so a compiled model does not recompile per batch. Column 0 (padding) is never set.
        """
        if self.first is None:
            raise ValueError("seen_before needs a plan with user offsets (SamplePlan.first)")
        sl = slice(step * batch_size, (step + 1) * batch_size)
        start, first = self.start[sl], self.first[sl]  # (B,)
        seen = torch.zeros(start.shape[0], n_items + 1, dtype=torch.bool, device=self.device)  # (B, N+1)
        if self.max_before == 0:
            return seen
        pos = first[:, None] + torch.arange(self.max_before, device=self.device)  # (B, E)
        items = torch.where(pos < start[:, None], self.flat[pos.clamp(max=self.flat.shape[0] - 1)], 0)  # (B, E)
        seen.scatter_(1, items, True)
        seen[:, 0] = False
        return seen
