"""Time-gap buckets (model.time_gaps): hand-computed gaps, their batches and their evaluation inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from lite_rec.batches import BatchMaker, build_sequence_store, plan_onepass
from lite_rec.evaluate import build_eval_set, iter_eval_batches
from lite_rec.time_gaps import FIRST_BUCKET, N_GAP_BUCKETS, gap_buckets

HOUR, DAY = 3_600, 86_400


def test_buckets_of_hand_computed_gaps() -> None:
    # user 0: gaps 0 s, 1 s, 14 s, 80 s, 4,900 s, 85,000 s, 2 days, 10 days, 40 days; user 1: 0 s
    times = build_sequence_store([[5, 5, 6, 20, 100, 5_000, 90_000, 90_000 + 2 * DAY, 90_000 + 12 * DAY,
                                   90_000 + 52 * DAY], [1, 1]])
    got = gap_buckets(times).tolist()
    assert got == [FIRST_BUCKET, 2, 3, 4, 5, 7, 7, 8, 9, 10, FIRST_BUCKET, 2]
    assert max(got) == N_GAP_BUCKETS - 1
    assert gap_buckets(build_sequence_store([[0, HOUR - 1], [0, HOUR]])).tolist() == [1, 6, 1, 7]  # edges


def test_timestamps_that_go_backwards_are_refused() -> None:
    with pytest.raises(ValueError, match="backwards at flat position 2"):
        gap_buckets(build_sequence_store([[1], [5, 3]]))


def test_batches_carry_the_gaps_of_their_window_even_across_the_window_start() -> None:
    store = build_sequence_store([[1, 2, 3, 4, 5]])
    gaps = gap_buckets(build_sequence_store([[0, 0, 20, 20, 20 + DAY]]))  # [1, 2, 4, 2, 8]
    maker = BatchMaker(store, 2, gaps=gaps)
    maker.set_plan(plan_onepass(store, 2), np.arange(2))
    items, _ = maker.batch(0, 2)
    assert items.tolist() == [[1, 2], [3, 4]]
    assert maker.batch_gaps(0, 2).tolist() == [[1, 2], [4, 2]]  # item 3's gap is to item 2, before its window
    with pytest.raises(ValueError, match="3 time-gap buckets for 5 items"):
        BatchMaker(store, 2, gaps=gaps[:3])


def test_the_test_split_reads_the_validation_items_gap_too() -> None:
    sequences = pd.DataFrame({"user_idx": [0], "train_seq": [[1, 2, 3]], "valid_item_idx": [4], "test_item_idx": [5],
                              "train_ts": [[0, 0, 100]], "valid_ts": [100 + DAY]})
    [batch] = list(iter_eval_batches(build_eval_set(sequences, "test", time_gaps=True), 3, 8, "cpu"))
    assert batch.inputs.tolist() == [[2, 3, 4]] and batch.gaps.tolist() == [[2, 5, 8]]
    [valid] = list(iter_eval_batches(build_eval_set(sequences, "valid", time_gaps=True), 4, 8, "cpu"))
    assert valid.gaps.tolist() == [[1, 2, 5, 0]]  # right-padded like the items
    assert next(iter(iter_eval_batches(build_eval_set(sequences, "valid"), 4, 8, "cpu"))).gaps is None
    assert isinstance(batch.gaps, torch.Tensor)
