"""The most-popular baseline: every user gets the items most often seen in training.

Why it is here: a learned recommender has to beat "recommend what everyone watches" under the
same protocol (same masking, same metrics, same users), or it has learned nothing personal. The
issue's done-criterion compares NDCG@10 against it.

Popularity is counted over the training interactions only (``train_seq``), so the validation and
test targets never leak into the scores. Many items share a count; ties are broken towards the
smaller item_idx (the earlier-seen item, see docs/data.md) by subtracting ``item_idx / (N + 2)``,
which is < 1 and so never reorders different counts. Without this, the strict-rank rule of
``metrics.py`` would credit the target with the best position among its ties.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from lite_rec.eval.evaluate import SPLITS, build_eval_set, evaluate_scores


def item_popularity(sequences: pd.DataFrame, n_items: int) -> torch.Tensor:
    """Training-interaction counts per item_idx, (N + 1,) float64; index 0 (padding) is 0."""
    flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences["train_seq"]] or [np.zeros(0, np.int64)])
    counts = np.bincount(flat, minlength=n_items + 1)[: n_items + 1]
    counts[0] = 0
    return torch.as_tensor(counts, dtype=torch.float64)


def popularity_scores(popularity: torch.Tensor) -> torch.Tensor:
    """Counts -> tie-free scores (N + 1,): count - item_idx / (N + 2); padding -inf."""
    n_plus_1 = popularity.shape[0]
    scores = popularity - torch.arange(n_plus_1, dtype=torch.float64) / (n_plus_1 + 1)
    scores[0] = float("-inf")
    return scores


def evaluate_popularity(
    sequences: pd.DataFrame,
    n_items: int,
    *,
    max_len: int = 20,
    ks: tuple[int, ...] = (10, 20),
    batch_size: int = 1024,
    exclude_history: bool = True,
    progress: bool = True,
) -> dict[str, float]:
    """Validation and test metrics of the most-popular ranking (same keys as ``evaluate_model``)."""
    scores = popularity_scores(item_popularity(sequences, n_items))  # (N+1,)

    def scorer(inputs: torch.Tensor) -> torch.Tensor:
        return scores[None, :].expand(inputs.shape[0], -1).clone()  # (B, N+1), masked in place later

    out: dict[str, float] = {}
    for split in SPLITS:
        out.update(
            evaluate_scores(
                scorer, build_eval_set(sequences, split), max_len=max_len, ks=ks, batch_size=batch_size,
                exclude_history=exclude_history, progress=progress,
            )
        )
    return out
