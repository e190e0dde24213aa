"""Operations on the item scores of a batch: the history logit and the history mask.

Both mark "the items this user already has" in a (B, N+1) or (B, T, N+1) score tensor without
building a mask of the logits' size where they can avoid it: for large catalogues the logits
alone take gigabytes. A prefix's history (position t of a one-pass window: the items at
positions 0..t) is one scatter index (``prefix_index``).
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100  # target value of positions that carry no loss (padding, already supervised)


def add_history_logit(logits: torch.Tensor, items: torch.Tensor, value: torch.Tensor,
                      seen: torch.Tensor | None = None, history: torch.Tensor | None = None) -> torch.Tensor:
    """``logits`` plus ``value`` at every item the user already has; a new tensor.

    - logits (B, T, N+1), items (B, T): at position t, the items at positions 0..t (each
      prefix's own history, as ``mask_history``; the target is never among them unless it is a
      repeat, which is how the value learns whether users repeat items).
    - logits (B, N+1): the items of ``history`` (B, H) if given (the whole history at
      evaluation and serving), else of ``items``.
    - seen (B, N+1) bool, optional: items from before the input window, at every position.

    Each item counts once however often it occurs. Column 0 (padding) is -inf and stays so.
    For (B, T, N+1) logits no mask of that size is built: a repeat inside the window and an item
    already in ``seen`` are pointed at column 0, and one in-place scatter adds the value at the
    rest of the window's items, so the result is the only new logits-sized tensor (as with
    ``mask_history``); adding the value times a mask would also build a bool mask and a float
    product of that size.

    Why: on MovieLens no user rates a movie twice, so every item of the history is a wrong
    answer; a model scored without the evaluation's mask (the paper's unmasked tables) has to
    learn that from its inputs alone, one item at a time. One learned score learns it for all
    items at once, from the data (on a catalogue where users do come back to items, it learns a
    positive score), and is exactly zero at the start.
    """
    if logits.dim() == 2:  # a (B, N+1) mask is as small as the logits' batch
        index = items if history is None else history  # (B, H)
        has = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device).scatter(-1, index, True)
        if seen is not None:
            has = has | seen
        return logits + value * has  # column 0: -inf + anything finite = -inf
    t = items.shape[1]
    earlier = torch.ones(t, t, dtype=torch.bool, device=items.device).tril(-1)  # (T, T): s' < s
    repeat = ((items[:, :, None] == items[:, None, :]) & earlier).any(-1)  # (B, T): came earlier in the window
    index = prefix_index(items.masked_fill(repeat, 0))  # (B, T, T): each item once per row, 0 elsewhere
    if seen is not None:
        out = logits + value * seen[:, None, :]  # (B, T, N+1): (B, 1, N+1) broadcast, the items before the window
        index = index.masked_fill(seen.gather(-1, index.flatten(1)).view_as(index), 0)  # ... scored once
    else:
        out = logits.clone()
    # read from the input, written into the new tensor: column 0 gets -inf back, however often
    return out.scatter_(-1, index, logits.gather(-1, index) + value)


def prefix_index(items: torch.Tensor) -> torch.Tensor:
    """(B, T) item_idx -> (B, T, T): row [b, t] holds the items of positions 0..t of ``items[b]``
    and 0 (the padding column) at later positions: the scatter index of each prefix's history
    (``mask_history``, ``add_history_logit``)."""
    t = items.shape[1]
    later = torch.ones(t, t, dtype=torch.bool, device=items.device).triu(1)  # (T, T): s > t
    return items[:, None, :].expand(-1, t, -1).masked_fill(later, 0)  # [b, t, s] = items[b, s] for s <= t



def mask_history(logits: torch.Tensor, items: torch.Tensor, seen: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T, N+1) ``logits`` with -inf at the items each position's prefix holds (positions 0..t
    of ``items`` (B, T)) and, with ``seen`` (B, N+1) bool, at the items from before the window, at
    every position; a new tensor.

    Where: the teachers' distribution of a distilled model (``train.distill``) leaves out what the
    user already has, as the evaluation's masked ranking does. One scatter with a (B, T, T) index
    (later positions point at column 0, the padding column, which is -inf anyway): no
    (B, T, N+1) mask is built.
    """
    logits = logits.scatter(-1, prefix_index(items), float("-inf"))
    return logits if seen is None else logits.masked_fill(seen[:, None, :], float("-inf"))
