"""The sampled softmax (``train.loss=sampled``): next-item training without the catalog-sized logits.

The paper's loss (Eq. 6) is a cross-entropy over every item, so each supervised position costs a
row of N + 1 logits: at 200 positions x 128 sequences and 1M items that is 25.6G scores, 102 GB in
fp32, before the backward pass. The sampled loss scores each position against its own target and a
set of negatives shared by the whole batch:

- **in-batch negatives**: the batch's other targets (``train.in_batch_negatives``), which come at
  the training frequency of each item, so popular items are pushed down about as often as a full
  softmax would push them;
- **sampled negatives**: ``train.num_negatives`` items drawn per step (with replacement) from
  ``train.negative_sampler``: uniform over the catalog, or by training frequency + 1 (the + 1
  gives every item a chance, so none is left out of the estimate below).

**The logQ correction** (Bengio & Senecal 2008; Yi et al. 2019 for in-batch negatives): the
normaliser sum_j exp(s_j) of the full softmax is estimated by importance sampling. A negative
column c is scored ``s_c - log E[count_c]``, where E[count_c] = M p(c) + K q(c) is how often item c
is expected among the step's negatives (M supervised targets at training frequency p, K draws from
the proposal q). The estimate sum_columns exp(s_c) / E[count_c] has expectation exactly
sum_c exp(s_c) over the catalog, whichever mix of in-batch and sampled negatives (the two parts are
weighted by their combined expected count, not each on its own, which would count the catalog
twice). Without the correction, frequently drawn items would be over-counted in the normaliser
and the model would learn to push popular items down too far.

**Accidental hits**: a negative column that is the position's own target (its in-batch column,
another position with the same target, a draw that happens to hit it) is left out (-inf), and the
target itself enters once, uncorrected. With every catalog item as a negative once (E[count] = 1,
e.g. K = N draws at q = 1/N on average) the loss is the full softmax cross-entropy exactly
(``tests/unit/train/test_losses.py``).

What is refused (``lite_rec/core/config.py``): ``train.distill_from`` (distillation compares full
distributions), ``model.history_logit`` (its score needs each candidate's membership in each
prefix's history), and several training processes (``Trainer`` calls the model's user-vector
methods, not the DDP wrapper's forward, which synchronises gradients). The loss the training log
reports is the sampled one: not comparable with a full-softmax run's loss; validation metrics are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from lite_rec.core.errors import ConfigError
from lite_rec.data.sequences import SequenceStore
from lite_rec.model.scoring import IGNORE_INDEX

if TYPE_CHECKING:
    from lite_rec.core.config import TrainConfig
    from lite_rec.model.rec_llm import LiteRecModel

__all__ = ["NegativeSampler", "SampledSoftmax", "sampled_forward", "sampled_softmax_loss", "target_counts"]


def sampled_softmax_loss(user: torch.Tensor, targets: torch.Tensor, candidates: torch.Tensor,
                         log_expected: torch.Tensor, item_weight: torch.Tensor) -> torch.Tensor:
    """Mean over supervised positions of -log softmax of the target against logQ-corrected negatives.

    user (M, D) user vectors; targets (M,) item_idx, IGNORE_INDEX where a position has no target;
    candidates (C,) negative item_idx shared by every position (0 = no candidate: left out);
    log_expected (C,) log of each candidate's expected count among the negatives (the logQ term);
    item_weight (N+1, D) item output vectors (``LiteRecModel.head_weight``). Builds (M, C) scores,
    never (M, N+1). In fp32 whatever the autocast, as ``LiteRecModel.item_logits`` (ties in bf16).
    """
    supervised = targets != IGNORE_INDEX  # (M,)
    positive = targets.clamp(min=0)  # (M,) unsupervised rows score item 0 and are dropped below
    with torch.autocast(user.device.type, enabled=False):
        user = user.float()  # (M, D)
        weight = item_weight.float()
        positive_logit = (user * weight[positive]).sum(-1)  # (M,)
        negative_logit = user @ weight[candidates].T - log_expected.float()  # (M, C)
    hit = (candidates[None, :] == positive[:, None]) | (candidates == 0)[None, :]  # (M, C) accidental hits
    negative_logit = negative_logit.masked_fill(hit, float("-inf"))
    # log(exp(s_pos) + sum_c exp(s_c - log E[count_c])) without concatenating a (M, C + 1) copy
    log_normaliser = torch.logaddexp(positive_logit, torch.logsumexp(negative_logit, dim=-1))  # (M,)
    per_position = (log_normaliser - positive_logit).masked_fill(~supervised, 0.0)  # (M,)
    return per_position.sum() / supervised.sum().clamp(min=1)


def target_counts(store: SequenceStore, n_items: int) -> np.ndarray:
    """(N+1,) how often each item_idx is a training target: every training item but each user's first.

    The ``sampling`` strategy draws one target per user and epoch, so its frequencies differ a
    little (long histories weigh less); the estimate stays consistent, only less efficient.
    """
    counts = np.bincount(store.flat, minlength=n_items + 1).astype(np.float64)
    counts -= np.bincount(store.flat[store.starts], minlength=n_items + 1)
    counts[0] = 0.0
    return counts[: n_items + 1]


class NegativeSampler:
    """The negatives of a step and the log of each one's expected count (the logQ term)."""

    def __init__(self, counts: np.ndarray, num_negatives: int, distribution: str, in_batch: bool,
                 device: torch.device | str = "cpu") -> None:
        """counts (N+1,) training-target frequency per item_idx (``target_counts``), row 0 ignored."""
        if distribution not in ("uniform", "popularity"):
            raise ConfigError(f"train.negative_sampler must be 'uniform' or 'popularity' (got {distribution!r})")
        freq = torch.as_tensor(counts, dtype=torch.float64, device=device).clone()  # (N+1,)
        freq[0] = 0.0
        self.n_items = int(freq.shape[0]) - 1
        self.num_negatives, self.distribution, self.in_batch = num_negatives, distribution, in_batch
        self.target_share = freq / freq.sum().clamp(min=1.0)  # (N+1,) p(c): share of training targets
        weights = torch.ones_like(freq) if distribution == "uniform" else freq + 1.0  # (N+1,)
        weights[0] = 0.0
        self.proposal = weights / weights.sum()  # (N+1,) q(c), q(0) = 0
        self.cdf = self.proposal.cumsum(0)  # (N+1,) popularity draws: one searchsorted, O(K log N)

    def draw(self) -> torch.Tensor:
        """(K,) item_idx drawn with replacement from the proposal, by torch's default generator
        (whose state a training checkpoint saves: a resumed run draws the same negatives)."""
        k, device = self.num_negatives, self.proposal.device
        if self.distribution == "uniform":
            return torch.randint(1, self.n_items + 1, (k,), device=device)
        u = torch.rand(k, dtype=torch.float64, device=device) * self.cdf[-1]  # (K,)
        return torch.searchsorted(self.cdf, u, right=True).clamp(1, self.n_items)

    def candidates(self, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """targets (M,) item_idx or IGNORE_INDEX -> candidates (C,), log expected counts (C,).

        C = M + K with in-batch negatives (unsupervised positions become item 0, which the loss
        leaves out), else K. No host sync and fixed shapes: the count of supervised targets stays
        on the device.
        """
        supervised = targets != IGNORE_INDEX  # (M,)
        parts = [torch.where(supervised, targets, 0)] if self.in_batch else []
        if self.num_negatives:
            parts.append(self.draw())
        candidates = torch.cat(parts)  # (C,)
        expected = self.num_negatives * self.proposal[candidates]  # (C,) float64
        if self.in_batch:
            expected = expected + supervised.sum() * self.target_share[candidates]
        # item 0 and never-seen in-batch columns: a finite stand-in; the loss masks item 0 anyway
        return candidates, expected.clamp(min=1e-30).log().float()


class SampledSoftmax:
    """The training forward of ``train.loss=sampled``, called as the model's forward is in
    ``trainer.train_step``: ``(items, targets, seen=, contexts=) -> (None, loss)``.

    User vectors come from the model's own methods (``prefix_user_vectors`` for (B, T) targets,
    ``user_vectors`` for (B,)), with the dropout ``item_logits`` applies to them; item vectors only
    through ``head_weight()``.
    """

    def __init__(self, model: "LiteRecModel", sampler: NegativeSampler, compile_model: bool = False) -> None:
        self.model, self.sampler = model, sampler
        self.user_vectors = torch.compile(model.user_vectors) if compile_model else model.user_vectors
        self.prefix_user_vectors = model.prefix_user_vectors
        if compile_model and model.spec.causal:
            self.prefix_user_vectors = torch.compile(model.prefix_user_vectors)

    def __call__(self, items: torch.Tensor, targets: torch.Tensor, *, seen: torch.Tensor | None = None,
                 contexts: torch.Tensor | None = None) -> tuple[None, torch.Tensor]:
        if targets.dim() == 2:  # every position of a causal window
            user = self.prefix_user_vectors(items, contexts).flatten(0, 1)  # (B*T, D)
        else:
            user = self.user_vectors(items, contexts)  # (B, D)
        targets = targets.flatten()  # (M,)
        candidates, log_expected = self.sampler.candidates(targets)  # (C,), (C,)
        loss = sampled_softmax_loss(self.model.dropout(user), targets, candidates, log_expected,
                                    self.model.head_weight())
        return None, loss


def sampled_forward(model: "LiteRecModel", store: SequenceStore, train: "TrainConfig", device: torch.device,
                    distributed: bool) -> SampledSoftmax:
    """The sampled loss of a run: its sampler over ``store``'s training targets, on ``device``."""
    if distributed:
        raise ConfigError("train.loss=sampled trains in one process only: the sampled loss reads the model's user "
                          "vectors directly, past DistributedDataParallel's forward, which synchronises gradients; "
                          "train without --nproc-per-node or with train.loss=full")
    sampler = NegativeSampler(target_counts(store, model.spec.n_items), train.num_negatives,
                              train.negative_sampler, train.in_batch_negatives, device)
    return SampledSoftmax(model, sampler, compile_model=train.compile)
