"""Full-ranking evaluation on the validation and test splits (the leave-one-out protocol).

Validation predicts ``valid_item_idx`` from ``train_seq``; test predicts ``test_item_idx`` from
``train_seq + [valid_item_idx]``. The model sees the last ``max_seq_len`` items of that history;
with ``eval.exclude_history`` the *whole* history (not only the last L items: I_u is everything
the user has interacted with) is masked before ranking. Each call computes both protocols from
one scoring pass, because results are published both ways (the paper's tables do not exclude
history; our default does).

Histories stay in one flat array; each batch of users is padded to its own longest history on
the device, so memory is O(batch x longest history in the batch), not O(users x longest).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from lite_rec.data.sequences import SequenceStore, build_sequence_store, with_pad_row
from lite_rec.eval.metrics import RankAccumulator
from lite_rec.model.context import item_contexts
from lite_rec.model.spec import ModelSpec

# (B, L) item_idx [, contexts=(B, L, C) context rows, for a model that reads them]
# [, history=(B, H) every history item, for a model with a history logit] -> (B, N+1) scores
Scorer = Callable[..., torch.Tensor]
SPLITS = ("valid", "test")


@dataclass(frozen=True)
class EvalSet:
    """The users of one split: their full histories (flat) and held-out targets."""

    split: str  # "valid" | "test"
    histories: SequenceStore  # everything the user interacted with before the target
    targets: np.ndarray  # (U,) int64 item_idx
    contexts: np.ndarray | None = None  # (I, C) context row of each history item (model/context.py); None = not read

    def __len__(self) -> int:
        return len(self.targets)


def build_eval_set(sequences: pd.DataFrame, split: str, spec: ModelSpec | None = None) -> EvalSet:
    """Histories and targets of ``split`` from the columns of ``sequences.parquet``; also the
    histories' context rows when ``spec`` is of a model that reads them (``model/context.py``).
    The request time after each history is the split's target timestamp, read through
    ``context.history_contexts`` (via ``item_contexts``), the function serving reads a request's
    ``request_time`` through: offline and online scores of one history at one time agree."""
    if split == "valid":
        seqs = list(sequences["train_seq"])
        targets = sequences["valid_item_idx"].to_numpy(np.int64, copy=True)
    elif split == "test":
        valid = sequences["valid_item_idx"].to_numpy(np.int64)
        seqs = [np.append(np.asarray(s, dtype=np.int64), v) for s, v in zip(sequences["train_seq"], valid)]
        targets = sequences["test_item_idx"].to_numpy(np.int64, copy=True)
    else:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    contexts = None if spec is None else item_contexts(sequences, **spec.config.context_features, with_valid=split == "test",
                                                       query=split)
    return EvalSet(split, build_sequence_store(seqs), targets, contexts)


def _rows(flat: torch.Tensor, start: torch.Tensor, end: torch.Tensor, width: int) -> torch.Tensor:
    """flat[start:end] of each row, right-padded with 0 to `width`: flat (I,) -> (B, width);
    flat (I, C) -> (B, width, C)."""
    pos = start[:, None] + torch.arange(width, device=flat.device)  # (B, W)
    real = (pos < end[:, None]).view(*pos.shape, *([1] * (flat.dim() - 1)))  # (B, W[, 1])
    return torch.where(real, flat[pos.clamp(max=flat.shape[0] - 1)], 0)


class EvalBatch(NamedTuple):
    inputs: torch.Tensor  # (B, L) the last L items, right-padded
    history: torch.Tensor  # (B, H) every history item, 0-padded (what the masked ranking removes)
    targets: torch.Tensor  # (B,)
    contexts: torch.Tensor | None  # (B, L, C) context rows of ``inputs``, when the eval set has them


def iter_eval_batches(eval_set: EvalSet, max_len: int, batch_size: int, device: torch.device | str) -> Iterable[EvalBatch]:
    """The split's users in batches of ``batch_size``, in user order."""
    store = eval_set.histories
    flat = torch.as_tensor(np.append(store.flat, 0), device=device)
    context_flat = None if eval_set.contexts is None else torch.as_tensor(with_pad_row(eval_set.contexts), device=device)
    for lo in range(0, len(eval_set), batch_size):
        hi = min(lo + batch_size, len(eval_set))
        off_lo, off_hi = store.offsets[lo:hi], store.offsets[lo + 1 : hi + 1]
        width = max(int((off_hi - off_lo).max()), 1)
        start = torch.as_tensor(off_lo, device=device)
        end = torch.as_tensor(off_hi, device=device)
        window = torch.maximum(start, end - max_len)  # (B,)
        inputs = _rows(flat, window, end, max_len)  # (B, L)
        history = _rows(flat, start, end, width)  # (B, H)
        contexts = None if context_flat is None else _rows(context_flat, window, end, max_len)  # (B, L, C)
        yield EvalBatch(inputs, history, torch.as_tensor(eval_set.targets[lo:hi], device=device), contexts)


def evaluate_scores(
    scorer: Scorer,
    eval_set: EvalSet,
    *,
    max_len: int,
    ks: Iterable[int] = (10, 20),
    batch_size: int = 1024,
    exclude_history: bool = True,
    device: torch.device | str = "cpu",
    progress: bool = True,
    pass_history: bool = False,
) -> dict[str, float]:
    """Rank every item for every user of the split; metrics under both protocols.

    Keys: ``{split}_{metric}_{k}`` under the configured protocol, plus
    ``{split}_masked_*`` (history excluded) and ``{split}_unmasked_*`` (history kept),
    ``{split}_users`` and ``{split}_target_in_history`` (see ``metrics.py``).
    ``pass_history``: the scorer also gets ``history=`` (B, H), the user's whole history (a model
    with ``model.history_logit`` scores those items; the unmasked ranking then sees that score).
    """
    ks = tuple(ks)
    unmasked, masked = RankAccumulator(), RankAccumulator()
    n_batches = (len(eval_set) + batch_size - 1) // batch_size
    batches = iter_eval_batches(eval_set, max_len, batch_size, device)
    for inputs, history, targets, contexts in tqdm(batches, total=n_batches, desc=f"eval {eval_set.split}",
                                                   disable=not progress, leave=False):
        extra = {} if contexts is None else {"contexts": contexts}
        if pass_history:
            extra["history"] = history
        scores = scorer(inputs, **extra)  # (B, N+1)
        if scores.dtype != torch.float64:  # float64 scores (popularity tie-breaks) keep their precision
            scores = scores.float()
        unmasked.add(scores, targets)  # read-only
        masked.add(scores, targets, history)  # masks in place
    s = eval_set.split
    out: dict[str, float] = {}
    for name, acc in (("masked", masked), ("unmasked", unmasked)):
        out.update({f"{s}_{name}_{key}": value for key, value in acc.result(ks).items()})
    out.update({f"{s}_{key}": value for key, value in (masked if exclude_history else unmasked).result(ks).items()})
    out[f"{s}_users"] = float(len(eval_set))
    out[f"{s}_target_in_history"] = float(masked.target_in_history)
    return out


def model_scorer(model: torch.nn.Module, *, device: torch.device | str, bf16: bool = False) -> Scorer:
    """Inference scores of a :class:`~lite_rec.model.rec_llm.LiteRecModel` (eval mode, no grad)."""
    device = torch.device(device)

    @torch.no_grad()
    def score(inputs: torch.Tensor, contexts: torch.Tensor | None = None, history: torch.Tensor | None = None) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda"):
            logits, _ = model(inputs, contexts=contexts, history=history)
        return logits

    return score


COMBINES = ("logprob", "prob")


def ensemble_scorer(scorers: Iterable[Scorer], combine: str = "logprob") -> Scorer:
    """One scorer from several models' scorers: the mean of their per-item log-probabilities
    (``logprob``, a normalised geometric mean of the softmaxes) or of their probabilities (``prob``).

    Why normalise first: raw logits of separately trained models live on different scales and
    offsets, so a plain logit mean lets the most confident model decide. Used to measure seed
    ensembles (docs/results.md); the models must read the same
    input window, since the scorers all get the same (B, L) items.
    """
    scorers = list(scorers)
    if not scorers:
        raise ValueError("ensemble_scorer needs at least one scorer")
    if combine not in COMBINES:
        raise ValueError(f"combine must be one of {COMBINES}; got {combine!r}")

    @torch.no_grad()
    def score(inputs: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        total = None
        for scorer in scorers:
            logp = torch.log_softmax(scorer(inputs, **kwargs).float(), dim=-1)  # (B, N+1); padding column -inf
            part = logp if combine == "logprob" else logp.exp()
            total = part if total is None else total + part
        mean = total / len(scorers)  # (B, N+1)
        mean[:, 0] = float("-inf")  # padding is never recommended, also under "prob" (where it is 0)
        return mean

    return score


def evaluate_model(
    model: torch.nn.Module,
    eval_set: EvalSet,
    *,
    ks: Iterable[int] = (10, 20),
    batch_size: int = 1024,
    exclude_history: bool = True,
    device: torch.device | str = "cpu",
    bf16: bool = False,
    progress: bool = True,
) -> dict[str, float]:
    """Put the model in eval mode and rank all items for the split (see :func:`evaluate_scores`)."""
    was_training = model.training
    model.eval()
    try:
        return evaluate_scores(
            model_scorer(model, device=device, bf16=bf16), eval_set, max_len=model.spec.config.max_seq_len, ks=ks,
            batch_size=batch_size, exclude_history=exclude_history, device=device, progress=progress,
            pass_history=model.spec.config.history_logit,
        )
    finally:
        model.train(was_training)
