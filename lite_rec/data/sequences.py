"""A user's sequences as the stages read them: ``sequences.parquet`` checked on read, and the
flat layout every consumer shares.

Why one flat layout: training plans (``train.batches``), evaluation histories (``eval.evaluate``)
and the input contexts (``model.context``) all index the concatenation of every user's
``train_seq``, so a per-item column (timestamps, ratings) lines up with the items by position,
and a batch is one fancy-indexing gather instead of a Python loop per user.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lite_rec.core.errors import DataError

# the model settings that read the timestamp / rating columns (named in errors when they are missing)
CONTEXT_SETTINGS = "model.time_gaps / model.ratings / model.time_bias / model.query_time"


@dataclass(frozen=True)
class SequenceStore:
    """Every user's training items (or, laid out the same way, their timestamps or ratings),
    concatenated: user u owns ``flat[offsets[u]:offsets[u+1]]``."""

    flat: np.ndarray  # (I,) int64 item_idx (or the items' timestamps / float ratings)
    offsets: np.ndarray  # (U + 1,) int64

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def starts(self) -> np.ndarray:
        """Flat positions of each non-empty user's first entry."""
        return self.offsets[:-1][self.lengths > 0]


def build_sequence_store(train_seqs: Iterable[Sequence[int]], dtype: type = np.int64) -> SequenceStore:
    seqs = [np.asarray(s, dtype=dtype) for s in train_seqs]
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = np.concatenate(seqs) if seqs else np.zeros(0, dtype=dtype)
    return SequenceStore(flat=flat.astype(dtype), offsets=offsets)


SEQUENCE_COLUMNS = ("user_idx", "train_seq", "valid_item_idx", "test_item_idx")
# read when present (older files lack them): the input contexts (CONTEXT_SETTINGS) need them
SIDE_COLUMNS = {"ts": ("train_ts", "valid_ts"), "rating": ("train_rating", "valid_rating")}
# the time of each split's target: model.query_time's query time after that split's history
QUERY_TIME_COLUMNS = {"valid": "valid_ts", "test": "test_ts"}


def read_sequences(path: Path | str) -> pd.DataFrame:
    """``sequences.parquet`` (docs/data.md) with its columns checked; names the file when not.
    The timestamp and rating columns come along when the file has them (older files do not)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist: run `lite-rec ingest <dataset>` first")
    try:
        present = set(pq.read_schema(path).names)
        side = [*(c for pair in SIDE_COLUMNS.values() for c in pair), QUERY_TIME_COLUMNS["test"]]
        columns = [*SEQUENCE_COLUMNS, *(c for c in side if c in present)]
        frame = pd.read_parquet(path, columns=columns)
    except (KeyError, ValueError, OSError, pa.ArrowException) as exc:
        raise DataError(f"{path}: cannot read columns {', '.join(SEQUENCE_COLUMNS)} ({exc})") from None
    return frame.sort_values("user_idx", kind="stable").reset_index(drop=True)


def flat_column(sequences: pd.DataFrame, kind: str, with_valid: bool = False,
                source: str = "sequences.parquet") -> SequenceStore:
    """Every user's item timestamps (``kind="ts"``) or ratings (``"rating"``), laid out as
    ``build_sequence_store`` lays out ``train_seq`` (plus the validation item when ``with_valid``:
    the test split's histories).

    Older files have no such columns: the error says to re-run the data stage.
    """
    train, valid = SIDE_COLUMNS[kind]
    missing = [c for c in (train, valid) if c not in sequences.columns]
    if missing:
        raise DataError(f"{source}: no column(s) {', '.join(missing)}; {CONTEXT_SETTINGS} read them: "
                        "re-run `lite-rec ingest <dataset>` to rewrite the file")
    values = list(sequences[train])
    if with_valid:
        values = [np.append(np.asarray(t), v) for t, v in zip(values, sequences[valid], strict=True)]
    store = build_sequence_store(values, np.int64 if kind == "ts" else np.float64)
    lengths = np.fromiter(map(len, sequences["train_seq"]), dtype=np.int64, count=len(sequences)) + int(with_valid)
    if not np.array_equal(store.lengths, lengths):
        row = int(np.flatnonzero(store.lengths != lengths)[0])
        raise DataError(f"{source}: row {row} (user_idx {sequences['user_idx'].iloc[row]}): {train} has "
                        f"{store.lengths[row] - int(with_valid)} values for {lengths[row] - int(with_valid)} train_seq items")
    return store


def with_pad_row(values: np.ndarray) -> np.ndarray:
    """``values`` (I,) or (I, C) with one zero entry/row appended: where gathers of padding land."""
    return np.concatenate([values, np.zeros((1, *values.shape[1:]), dtype=values.dtype)])


def check_sequences(sequences: pd.DataFrame, n_items: int, source: str = "sequences.parquet") -> None:
    """Every item_idx must be a real item 1..N of the item vectors / head; name the first offender."""
    missing = [c for c in SEQUENCE_COLUMNS if c not in sequences.columns]
    if missing:
        raise DataError(f"{source}: missing column(s) {', '.join(missing)}")
    store = build_sequence_store(sequences["train_seq"])
    for column, values, owner in (
        ("train_seq", store.flat, np.repeat(np.arange(len(sequences)), store.lengths)),
        ("valid_item_idx", sequences["valid_item_idx"].to_numpy(np.int64), np.arange(len(sequences))),
        ("test_item_idx", sequences["test_item_idx"].to_numpy(np.int64), np.arange(len(sequences))),
    ):
        bad = np.flatnonzero((values < 1) | (values > n_items))
        if len(bad):
            row = int(owner[bad[0]])
            raise DataError(
                f"{source}: row {row} (user_idx {sequences['user_idx'].iloc[row]}), column {column}: item_idx "
                f"{int(values[bad[0]])} is outside 1..{n_items} ({len(bad)} such values)"
            )
