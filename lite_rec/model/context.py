"""What a history says about each input item besides which item it is (beyond the paper).

Four inputs, each a setting of ``ModelConfig``, each read from ``sequences.parquet``'s ``*_ts`` /
``*_rating`` columns:

- ``model.time_gaps``: the time gap to the user's previous item, and ``model.ratings``: the
  rating the user gave the item, as one context id per input position, which the model embeds
  and adds to the item's vector (``LiteRecModel.embed_items``);
- ``model.time_bias``: the item's time itself, from which the model biases each attention score
  by how long before the query item the key item came (``time_bucket``,
  ``LiteRecModel.contextualize``);
- ``model.query_time``: the time until the item that follows it, for the last input item the
  time of the prediction itself (``next_gap_index``).

Training and the offline evaluation read them from ``sequences.parquet``; serving from each
request's events ``{"item_id", "ts", "rating"}`` and its ``request_time``
(``lite_rec.infer.recommender.Recommender``). Both build the rows with one function,
``history_contexts``: the evaluation with each user's target timestamp as the request time,
serving with the request's, so the same history at the same time gets the same rows.
``context_fields`` names what a model reads (``ts``, ``rating``, ``request_time``), which the
bundle and the registered model record.

The context of an item is one row of ``CONTEXT_COLUMNS`` int64 values: its context id (0 when
the model reads no id), its Unix time in seconds (0 when the model reads no time) and the gap
index to the next item or to the query time (0 when unknown or not read).

Why time gaps: the paper reads item order only. On ML-1m 53% of consecutive ratings share their
second (a user rating a page of films at once), and the file order inside that second carries
signal; whether the last items came in one burst or days apart is something order alone cannot
tell the model. Why ratings: a film rated 1 says something else about the user's taste than one
rated 5, while both are interactions to the paper. Measured on ML-1m (three seeds, masked): time
gaps +0.008 R@10 / +0.006 N@10, ratings on top +0.003 / +0.001.

Gap index 0 is a user's first item (no previous one); 1.. cover the gap in seconds: 0, 1-9,
10-59, 1-10 min, 10-60 min, 1-24 h, 1-7 days, 7-30 days, more. The gap is always to the user's
previous item, also when that item lies before the input window. These ids never hold the gap
to the item being predicted (``model.query_time`` reads that, as the time of the request, in
its own column). Ratings are rounded and clipped to 1..5.
The context id is ``1 + gap * R + (rating - 1)`` (R = 5 with ratings, else 1; a feature not
used counts as 0); 0 is padding.

Why the query time (``model.query_time``): on ML-1m 42% of the test items share their second with
the user's last input and 91% come within the hour, while 8% come days or months later: whether
the item asked for continues the page of films being rated or starts a new visit is something
no input item says. A recommendation is asked for at a known time (the request's), so each input
item also gets an embedding of its gap to the next item (``next_gap_index``), and the last input
item of its gap to the query time: offline, the predicted item's timestamp stands in for the
request time, as in HSTU's public code (its relative time bias reads ``ts[i + 1] - ts[j]``, the
next item's time, for position i). Never its identity: a position reads when the next item came,
never which it was. In training every position but a user's last has a next item in the log; the
last carries no loss and gets gap 0 (unknown), so no validation or test time is read in training.
``model.query_gap_floor`` (seconds) reads every next gap below it as one: with 3600, the model
knows whether the user is back after an hour or more (a new visit, which a live service knows
from the request time) but not whether the item asked for shares its second with the last input
(on MovieLens: a page of films submitted at once, which a live service cannot know).
Measured on ML-1m (three seeds, masked, docs/results.md), on top of gaps, ratings and the time
bias: +0.006 R@10 / +0.004 N@10 with a 3600 s floor (0.3876 / 0.2350), about what the 9% of users
back after an hour or more gain (0.040 -> 0.090-0.097 N@10, +0.005 weighted); +0.042 / +0.034
without a floor, two thirds of it from the test items that share their second with the last input.

Why a time bias besides the gap: the gap says how far an item is from the one before it; what
matters for the item at the query position is how far each earlier item is from *it* (a film
rated minutes ago against one rated last year), the sum of all gaps in between, which attention
cannot read off per-item gap ids. TiSASRec and HSTU bias attention by the same pairwise interval.
Inside a window both times are input items' times, never the predicted item's. Measured on ML-1m
(three seeds, masked, docs/results.md): +0.001 R@10 / +0.001 N@10 on top of gaps and ratings,
inside the noise; per-item gaps already say most of it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from lite_rec.core.errors import DataError
from lite_rec.core.model_config import ModelConfig
from lite_rec.data.sequences import QUERY_TIME_COLUMNS, SequenceStore, flat_column

GAP_EDGES = np.array([0, 1, 10, 60, 600, 3_600, 86_400, 7 * 86_400, 30 * 86_400])  # lower edges, seconds
N_GAPS = 1 + len(GAP_EDGES)  # the first item, then one per edge
RATING_LEVELS = 5  # ratings 1..5
PAD_CONTEXT = 0
CONTEXT_ID, CONTEXT_TIME, CONTEXT_NEXT_GAP = 0, 1, 2  # columns of a context row
CONTEXT_COLUMNS = 3
UNKNOWN_NEXT_GAP = 0  # next-gap index of padding and of a last item without a query time
TIME_BUCKETS = 32  # |t_query - t_key| seconds: 0, then one bucket per power of two (1 s .. ~34 years)

# The fields of a request that a model may read besides item ids (a bundle's manifest, the registered
# model, /ready and every refusal name them): each history event's time and rating, the request's time
TS, RATING, REQUEST_TIME = "ts", "rating", "request_time"


def context_fields(config: ModelConfig) -> list[str]:
    """The request fields ``config``'s model reads, in a fixed order: ``ts`` (each history event's
    Unix time: ``time_gaps``, ``time_bias``, ``query_time``), ``rating`` (``ratings``) and
    ``request_time`` (``query_time``: the time of the prediction). [] for an ids-only model."""
    return [name for name, read in ((TS, config.reads_timestamps), (RATING, config.ratings),
                                    (REQUEST_TIME, config.query_time)) if read]


def gap_index(times: SequenceStore) -> np.ndarray:
    """(I,) int64 0..N_GAPS-1: each item's gap to the same user's previous item (``times.flat``
    holds Unix seconds, non-decreasing per user, as the data stage orders them); 0 for a user's first item."""
    starts = times.starts  # each user's first item
    gap = np.diff(times.flat, prepend=times.flat[:1])  # (I,) to the previous flat entry
    gap[starts] = 0  # ... which belongs to another user there
    if (gap < 0).any():
        raise ValueError(f"timestamps go backwards at flat position {int(np.flatnonzero(gap < 0)[0])}: "
                         "the data stage orders each user's items by time")
    index = np.searchsorted(GAP_EDGES, gap, side="right")  # (I,) 1..N_GAPS-1
    index[starts] = 0
    return index.astype(np.int64)


def next_gap_index(times: SequenceStore, query_times: np.ndarray | None = None, floor: int = 0) -> np.ndarray:
    """(I,) int64 0..N_GAPS-1: each item's gap to the same user's next item (``gap_index``'s
    buckets, 1..N_GAPS-1); for each user's last item the gap to ``query_times`` (U,) Unix seconds,
    the time of the prediction that follows the history, or ``UNKNOWN_NEXT_GAP`` without them.
    Gaps under ``floor`` seconds (``model.query_gap_floor``) all read as a gap of 0 s."""
    ends = times.offsets[1:] - 1  # (U,) each user's last item
    gap = np.diff(times.flat, append=times.flat[-1:])  # (I,) to the next flat entry
    gap[ends] = 0  # ... which belongs to another user there
    if query_times is not None:
        query_times = np.asarray(query_times, dtype=np.int64)
        if query_times.shape != ends.shape:
            raise ValueError(f"next_gap_index: {query_times.shape[0]} query times for {len(ends)} users")
        gap[ends] = query_times - times.flat[ends]
    if (gap < 0).any():
        at = int(np.flatnonzero(gap < 0)[0])
        raise ValueError(f"model.query_time: the next time lies before the item's at flat position {at} "
                         "(a query time before the user's last input, or timestamps out of order)")
    index = np.searchsorted(GAP_EDGES, np.where(gap < floor, 0, gap), side="right")  # (I,) 1..N_GAPS-1
    if query_times is None:
        index[ends] = UNKNOWN_NEXT_GAP
    return index.astype(np.int64)


def rating_index(ratings: SequenceStore) -> np.ndarray:
    """(I,) int64 0..RATING_LEVELS-1: rating 1..5 (rounded, clipped) minus one."""
    if np.isnan(ratings.flat).any():
        raise ValueError(f"model.ratings: rating missing at flat position {int(np.flatnonzero(np.isnan(ratings.flat))[0])}; "
                         "this dataset has no ratings to read")
    return (np.clip(np.rint(ratings.flat), 1, RATING_LEVELS) - 1).astype(np.int64)


def n_contexts(time_gaps: bool, ratings: bool) -> int:
    """Rows of the context embedding: padding plus one per (gap, rating) combination used."""
    return 1 + (N_GAPS if time_gaps else 1) * (RATING_LEVELS if ratings else 1)


def time_bucket(seconds: torch.Tensor) -> torch.Tensor:
    """Integer seconds >= 0 (any shape) -> bucket 0..TIME_BUCKETS-1: 0 for 0 s, else
    ``1 + floor(log2(seconds))`` (1 s -> 1, 2-3 s -> 2, 1 h -> 12, 1 day -> 17, 1 year -> 25).
    Counted as the bucket starts 1, 2, 4, ... at or below each value: exact in integers, and a
    third of the time of a float64 log2 over a batch's (B, T, T) gaps on a CPU."""
    starts = torch.pow(2, torch.arange(TIME_BUCKETS - 1, device=seconds.device, dtype=torch.long))  # (31,) 2**0 .. 2**30
    return torch.bucketize(seconds, starts, right=True)


def context_ids(times: SequenceStore | None, ratings: SequenceStore | None) -> np.ndarray:
    """(I,) int64 context id of every item, 1..n_contexts-1; None stores are features not used."""
    if times is None and ratings is None:
        raise ValueError("context_ids needs timestamps, ratings or both")
    gap = gap_index(times) if times is not None else 0
    rating = rating_index(ratings) if ratings is not None else 0
    return np.asarray(1 + gap * (RATING_LEVELS if ratings is not None else 1) + rating, dtype=np.int64)


def context_table(gap_times: SequenceStore | None, ratings: SequenceStore | None,
                  times: SequenceStore | None,  # times: for model.time_bias
                  next_gaps: np.ndarray | None = None) -> np.ndarray:
    """(I, CONTEXT_COLUMNS) int64 context rows of every item. Each source is None when the model
    does not read that feature: ``gap_times`` (timestamps) and ``ratings`` make the context id (0
    when both are None), ``times`` (timestamps) is copied as the time, ``next_gaps`` (I,)
    (``next_gap_index``) as the next-gap index."""
    sizes = {len(s.flat) for s in (gap_times, ratings, times) if s is not None}
    if next_gaps is not None:
        sizes.add(len(next_gaps))
    if len(sizes) != 1:
        raise ValueError("context_table needs at least one feature's values" if not sizes else
                         f"context_table: the features' sources differ in length ({sorted(sizes)} items)")
    table = np.zeros((sizes.pop(), CONTEXT_COLUMNS), dtype=np.int64)
    if gap_times is not None or ratings is not None:
        table[:, CONTEXT_ID] = context_ids(gap_times, ratings)
    if times is not None:
        table[:, CONTEXT_TIME] = times.flat
    if next_gaps is not None:
        table[:, CONTEXT_NEXT_GAP] = next_gaps
    return table


def history_contexts(times: SequenceStore | None, rating_values: SequenceStore | None,
                     request_times: np.ndarray | None, *, time_gaps: bool, ratings: bool, time_bias: bool = False,
                     query_time: bool = False, query_gap_floor: int = 0) -> np.ndarray | None:
    """(I, C) context rows of every history item, from the histories' timestamps and ratings (each
    None when not read) and ``request_times`` (U,) Unix seconds, the time each user's prediction is
    asked for (None in training: the last item's next gap stays unknown); None when no feature is used.

    The one function both sides call: the offline evaluation with each user's target timestamp as
    the request time (``item_contexts``), serving with the request's own time
    (``lite_rec.infer.recommender.Recommender``), so a history sent with ``request_time`` = the
    test item's time gets exactly the evaluation's contexts; ``query_gap_floor`` applies to both
    the same way (``next_gap_index``)."""
    if not (time_gaps or ratings or time_bias or query_time):
        return None
    next_gaps = next_gap_index(times, request_times, query_gap_floor) if query_time else None
    return context_table(times if time_gaps else None, rating_values if ratings else None,
                         times if time_bias else None, next_gaps)


def item_contexts(sequences: pd.DataFrame, *, time_gaps: bool, ratings: bool, time_bias: bool = False,
                  query_time: bool = False, query_gap_floor: int = 0, with_valid: bool = False,
                  query: str | None = None, source: str = "sequences.parquet") -> np.ndarray | None:
    """(I, C) context row of every history item (this module), aligned with the item store
    of ``train_seq`` (+ the validation item when ``with_valid``); None when no feature is used.

    ``query`` ("valid" | "test"): with ``query_time``, the split whose target's time is the request
    time after each user's last item (an evaluation's histories); None in training, where that
    item carries no loss and its next gap stays unknown. Built by ``history_contexts``, as serving
    builds a request's."""
    if not (time_gaps or ratings or time_bias or query_time):
        return None
    times = flat_column(sequences, "ts", with_valid, source) if time_gaps or time_bias or query_time else None
    request_times = None
    if query_time and query is not None:
        column = QUERY_TIME_COLUMNS[query]
        if column not in sequences.columns:
            raise DataError(f"{source}: no column {column}; model.query_time needs it: "
                            "re-run `lite-rec ingest <dataset>` to rewrite the file")
        request_times = sequences[column].to_numpy(np.int64)  # offline, the target's time is the request's
    try:
        return history_contexts(times, flat_column(sequences, "rating", with_valid, source) if ratings else None,
                                request_times, time_gaps=time_gaps, ratings=ratings, time_bias=time_bias,
                                query_time=query_time, query_gap_floor=query_gap_floor)
    except ValueError as exc:
        raise DataError(f"{source}: {exc}") from None
