"""Time gaps between a user's consecutive items, as a few log-spaced buckets (``model.time_gaps``).

Why: beyond the paper, which reads item order only. On ML-1m 53% of consecutive ratings share
their second (a user rating a page of films at once) and the file order inside that second
carries signal (shuffling it costs accuracy, docs/results.md session 9). Whether the last items
came in one burst or after days apart is something order alone cannot tell the model.

Bucket 0 is padding, 1 a user's first item (no previous one); the rest cover the gap to the
previous item in seconds: 0, 1-9, 10-59, 1-10 min, 10-60 min, 1-24 h, 1-7 days, 7-30 days, more.
The gap is always to the user's previous item, also when that item lies before the input
window. The gap to the item being predicted is never used: at test time it is unknown.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the model imports this module's constants; batches imports the model
    from lite_rec.batches import SequenceStore

GAP_EDGES = np.array([0, 1, 10, 60, 600, 3_600, 86_400, 7 * 86_400, 30 * 86_400])  # lower edges, seconds
PAD_BUCKET, FIRST_BUCKET = 0, 1
N_GAP_BUCKETS = 2 + len(GAP_EDGES)  # padding, first item, one per edge


def gap_buckets(times: SequenceStore) -> np.ndarray:
    """(I,) int64 bucket of each item's gap to the same user's previous item (``times.flat``
    holds Unix seconds, non-decreasing per user, DESIGN.md's order)."""
    starts = times.offsets[:-1][times.lengths > 0]  # each user's first item
    gap = np.diff(times.flat, prepend=times.flat[:1])  # (I,) to the previous flat entry
    gap[starts] = 0  # ... which belongs to another user there
    if (gap < 0).any():
        raise ValueError(f"timestamps go backwards at flat position {int(np.flatnonzero(gap < 0)[0])}: "
                         "the data stage orders each user's items by time")
    buckets = 1 + np.searchsorted(GAP_EDGES, gap, side="right")  # (I,) 2..N_GAP_BUCKETS-1
    buckets[starts] = FIRST_BUCKET
    return buckets.astype(np.int64)
