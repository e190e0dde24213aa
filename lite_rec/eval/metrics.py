"""Full-ranking metrics: the target's rank among all items, Recall@k and NDCG@k.

Why ranks and not top-k lists: with one held-out target per user (leave-one-out), Recall@k is
1 when the target ranks in the top k, and NDCG@k is 1 / log2(rank + 2) then (the ideal DCG is 1).
Both follow from the target's 0-based rank, computed for a whole batch of users at once as the
number of items whose score is strictly higher than the target's. Ties are therefore resolved in
the target's favour; model scores are continuous, so ties have probability ~0 there, and the
popularity baseline breaks its ties itself (see ``popularity.py``).

History exclusion (the paper's problem: predict from I \\ I_u): the items the user already
interacted with before the target get a score of -inf by one ``scatter_`` over a padded
(B, H) index tensor (index 0 is the padding item, whose logit is -inf anyway). The target
itself is never masked: the data stage removes duplicate (user, item) pairs, so a target cannot
occur in its own history; on data where it does, masking it would make a hit impossible, so its
score is restored and the case is counted (``target_in_history``) for the protocol record.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def mask_history_(scores: torch.Tensor, history: torch.Tensor, targets: torch.Tensor) -> int:
    """In place: history items -> -inf, the target keeps its score. Returns how many targets
    were in their own history.

    scores (B, N+1) float, history (B, H) item_idx with 0 as padding, targets (B,).
    """
    target_scores = scores.gather(1, targets[:, None])  # (B, 1)
    in_history = (history == targets[:, None]).any(1)  # (B,)
    scores.scatter_(1, history, float("-inf"))
    scores.scatter_(1, targets[:, None], target_scores)
    return int(in_history.sum())


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based rank of each target: the number of items scored strictly higher. (B,) int64."""
    target_scores = scores.gather(1, targets[:, None])  # (B, 1)
    return (scores > target_scores).sum(1)


def metrics_from_ranks(ranks: torch.Tensor, ks: Iterable[int]) -> dict[str, float]:
    """Recall@k and NDCG@k averaged over users, from 0-based target ranks (B,)."""
    ranks = ranks.double()
    out: dict[str, float] = {}
    for k in ks:
        hit = ranks < k
        out[f"recall_{k}"] = float(hit.double().mean()) if len(ranks) else 0.0
        gain = torch.where(hit, 1.0 / torch.log2(ranks + 2.0), torch.zeros_like(ranks))
        out[f"ndcg_{k}"] = float(gain.mean()) if len(ranks) else 0.0
    return out


class RankAccumulator:
    """Collects target ranks batch by batch, then averages the metrics over all users."""

    def __init__(self) -> None:
        self._ranks: list[torch.Tensor] = []
        self.target_in_history = 0

    def add(self, scores: torch.Tensor, targets: torch.Tensor, history: torch.Tensor | None = None) -> None:
        """scores (B, N+1) — modified in place when `history` (B, H) is given."""
        if history is not None:
            self.target_in_history += mask_history_(scores, history, targets)
        self._ranks.append(target_ranks(scores, targets).cpu())

    @property
    def ranks(self) -> torch.Tensor:
        return torch.cat(self._ranks) if self._ranks else torch.zeros(0, dtype=torch.long)

    def result(self, ks: Iterable[int]) -> dict[str, float]:
        return metrics_from_ranks(self.ranks, ks)

