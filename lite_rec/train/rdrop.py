"""R-Drop (Liang et al., 2021), ``train.rdrop_weight``: each training batch runs twice through the
model, with independent dropout masks, and besides both passes' cross-entropy the loss asks the
two next-item distributions to agree (a symmetric KL at every supervised position).

Why (beyond the paper): our ML-1m models train with heavy dropout (0.5 on the item inputs, 0.2
inside the backbone), and inference uses the model without dropout, a different function from
any network trained. Averaging several trained models (docs/results.md, sessions 8-12) gains
about +0.003 N@10 over one, and distilling them into one keeps most of it. If the spread between
dropout sub-networks were a large part of what the ensemble removes, R-Drop would remove it
inside one model and one training, at twice the compute per step, with no teachers to train
first. Measured on ML-1m (docs/results.md, session 15): it is not. Weights 0.2-0.5 (three runs,
58-64 epochs) scored 0.3824 / 0.2317 R@10 / N@10, the recipe's level without it (0.3814 /
0.2310 over twenty-one runs); weight 2 lost 0.02 N@10. Kept for other data, off by default.
"""

from __future__ import annotations

import torch

# a log-probability for items a softmax leaves out (-inf under train.loss_excludes_history and for
# padding column 0): finite, so that 0 * (a - b) is 0 and not nan; exp() of it is 0 in float32
LOG_FLOOR = -1e4


def twice(x: torch.Tensor | None) -> torch.Tensor | None:
    """A batch stacked on itself along dim 0: (B, ...) -> (2B, ...); rows i and B + i are one sample."""
    return None if x is None else torch.cat([x, x])


def symmetric_kl(logits: torch.Tensor, supervised: torch.Tensor) -> torch.Tensor:
    """Mean over supervised positions of KL(p || q) + KL(q || p), halved.

    ``logits`` (2B, ..., N+1): a batch stacked on itself (``twice``) after one forward pass, so
    its halves p and q saw different dropout masks; ``supervised`` (B, ...) bool: the positions
    that carry a loss (a target that is not IGNORE_INDEX). Uses KL(p||q) + KL(q||p) =
    sum (p - q)(log p - log q), one pass over the items.
    """
    logp = torch.log_softmax(logits.float(), dim=-1).clamp(min=LOG_FLOOR)  # (2B, ..., N+1)
    a, b = logp.chunk(2)  # (B, ..., N+1) each
    per_position = ((a.exp() - b.exp()) * (a - b)).sum(-1)  # (B, ...)
    return 0.5 * per_position[supervised].sum() / supervised.sum().clamp(min=1)
