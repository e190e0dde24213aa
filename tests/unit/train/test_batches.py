"""Training samples of the sampling / all / onepass strategies on hand-written sequences."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lite_rec.core.errors import DataError
from lite_rec.data.sequences import build_sequence_store, check_sequences, flat_column, read_sequences
from lite_rec.train.batches import BatchMaker, epoch_plan, plan_all, plan_onepass, plan_sampling

IGN = -100


def _materialise(store, plan, max_len):
    maker = BatchMaker(store, max_len)
    maker.set_plan(plan, np.arange(len(plan)))
    items, targets = maker.batch(0, len(plan))
    return items.tolist(), targets.tolist()


STORE = build_sequence_store([[1, 2, 3, 4], [5, 6], [7]])


def test_store_concatenates_sequences_with_offsets() -> None:
    assert STORE.flat.tolist() == [1, 2, 3, 4, 5, 6, 7]
    assert STORE.offsets.tolist() == [0, 4, 6, 7]


def test_all_yields_every_prefix_truncated_to_the_last_items() -> None:
    plan = plan_all(STORE, max_len=2)
    items, targets = _materialise(STORE, plan, 2)
    assert items == [[1, 0], [1, 2], [2, 3], [5, 0]]  # right-padded, most recent 2 items
    assert targets == [2, 3, 4, 6]
    assert plan.n_targets == 4  # user 2 (one item) has no target


def test_onepass_windows_cover_each_target_once_without_overlap() -> None:
    plan = plan_onepass(STORE, max_len=2)
    items, targets = _materialise(STORE, plan, 2)
    assert items == [[1, 2], [3, 0], [5, 0]]
    assert targets == [[2, 3], [4, IGN], [6, IGN]]
    assert plan.n_targets == plan_all(STORE, 2).n_targets == 4


@pytest.mark.parametrize("strategy", ["onepass", "all"])
def test_seen_before_holds_exactly_the_users_items_before_each_window(strategy: str) -> None:
    store = build_sequence_store([[1, 2, 3, 4, 5, 6], [7, 8]])
    plan = plan_onepass(store, max_len=2) if strategy == "onepass" else plan_all(store, max_len=2)
    maker = BatchMaker(store, 2)
    order = np.arange(len(plan))[::-1].copy()  # a shuffled order: rows follow it
    maker.set_plan(plan, order)
    items, _ = maker.batch(0, len(plan))
    seen = maker.seen_before(0, len(plan), n_items=8)  # (S, 9)
    assert seen.shape == (len(plan), 9) and not seen[:, 0].any()
    for row, sample in enumerate(order):
        user_first, start = int(plan.first[sample]), int(plan.start[sample])
        want = set(store.flat[user_first:start].tolist())
        assert set(seen[row].nonzero().flatten().tolist()) == want
        assert not want & set(items[row].tolist()) - {0}  # the window's own items are not repeated here
    if strategy == "onepass":  # windows [1, 2], [3, 4], [5], [7]: the third saw 1-4 before it
        assert [sorted(seen[r].nonzero().flatten().tolist()) for r in range(len(plan))][::-1] == [[], [1, 2], [1, 2, 3, 4], []]


def test_sampling_draws_one_contiguous_segment_per_user() -> None:
    seen = set()
    for epoch in range(40):
        plan = plan_sampling(STORE, max_len=2, rng=np.random.default_rng([0, 1, epoch]))
        assert len(plan) == 2  # users with >= 2 items
        items, targets = _materialise(STORE, plan, 2)
        for row, target, start, end in zip(items, targets, plan.start, plan.end):
            assert 1 <= end - start <= 2
            assert [i for i in row if i] == STORE.flat[start:end].tolist() and target == STORE.flat[end]
        seen.add(tuple(targets))
        assert targets[1] == 6  # user 1's only possible target
    assert {t[0] for t in seen} == {2, 3, 4}  # every target position of user 0 gets drawn


def test_epoch_order_is_a_function_of_seed_stage_and_epoch() -> None:
    store = build_sequence_store([list(range(1, 30))])
    a = epoch_plan("all", store, 5, seed=3, stage=1, epoch=2)[1]
    b = epoch_plan("all", store, 5, seed=3, stage=1, epoch=2)[1]
    c = epoch_plan("all", store, 5, seed=3, stage=1, epoch=3)[1]
    d = epoch_plan("all", store, 5, seed=3, stage=2, epoch=2)[1]
    assert a.tolist() == b.tolist()
    assert a.tolist() != c.tolist() and a.tolist() != d.tolist()
    assert sorted(a.tolist()) == list(range(28))


def test_batches_slice_the_shuffled_plan() -> None:
    plan = plan_all(STORE, 2)
    maker = BatchMaker(STORE, 2)
    maker.set_plan(plan, np.array([3, 0, 2, 1]))
    assert maker.n_batches(3) == 2
    items, targets = maker.batch(1, 3)  # the 4th sample of the order = plan sample 1
    assert items.tolist() == [[1, 2]] and targets.tolist() == [3]


def _write_sequences(path: Path, frame: pd.DataFrame) -> Path:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(table, path)
    return path


def test_read_sequences_sorts_by_user_and_reads_lists(tmp_path: Path) -> None:
    frame = pd.DataFrame({"user_idx": [1, 0], "user_id": ["b", "a"], "train_seq": [[3, 1], [2]],
                          "valid_item_idx": [2, 3], "test_item_idx": [1, 1]})
    got = read_sequences(_write_sequences(tmp_path / "sequences.parquet", frame))
    assert got["user_idx"].tolist() == [0, 1]
    assert [list(s) for s in got["train_seq"]] == [[2], [3, 1]]


def test_read_sequences_names_the_file_and_missing_column(tmp_path: Path) -> None:
    frame = pd.DataFrame({"user_idx": [0], "train_seq": [[1]], "valid_item_idx": [2]})
    path = _write_sequences(tmp_path / "sequences.parquet", frame)
    with pytest.raises(DataError, match=r"sequences\.parquet.*test_item_idx"):
        read_sequences(path)
    with pytest.raises(DataError, match="does not exist"):
        read_sequences(tmp_path / "nope.parquet")


def test_check_sequences_names_row_column_and_bad_index() -> None:
    frame = pd.DataFrame({"user_idx": [0, 1], "train_seq": [[1, 2], [3, 9]], "valid_item_idx": [3, 1],
                          "test_item_idx": [2, 2]})
    check_sequences(frame, n_items=9)
    with pytest.raises(DataError, match=r"row 1 \(user_idx 1\), column train_seq: item_idx 9 is outside 1\.\.5"):
        check_sequences(frame, n_items=5)
    frame.loc[0, "valid_item_idx"] = 0
    with pytest.raises(DataError, match="column valid_item_idx: item_idx 0"):
        check_sequences(frame, n_items=9)


TIMED = pd.DataFrame({  # user 0: items 1-5 at t 10, 10, 10, 20, 30 (valid at 30); user 1 starts at t 30 too
    "user_idx": [0, 1], "train_seq": [[1, 2, 3, 4, 5], [6, 7]], "valid_item_idx": [8, 9], "test_item_idx": [9, 8],
    "train_ts": [[10, 10, 10, 20, 30], [30, 30]], "valid_ts": [30, 40],
})


def test_flat_timestamps_follow_the_items_layout_with_or_without_the_validation_item() -> None:
    assert flat_column(TIMED, "ts").flat.tolist() == [10, 10, 10, 20, 30, 30, 30]
    assert flat_column(TIMED, "ts", with_valid=True).offsets.tolist() == [0, 6, 9]  # the test split's histories
    assert flat_column(TIMED, "ts", with_valid=True).flat.tolist() == [10, 10, 10, 20, 30, 30, 30, 30, 40]


def test_flat_timestamps_name_the_missing_column_and_a_misaligned_row() -> None:
    with pytest.raises(DataError, match=r"no column\(s\) train_ts, valid_ts.*re-run `lite-rec ingest"):
        flat_column(TIMED.drop(columns=["train_ts", "valid_ts"]), "ts")
    bad = TIMED.copy()
    bad["train_ts"] = [[10, 10, 10, 20, 30], [30]]
    with pytest.raises(DataError, match=r"row 1 \(user_idx 1\): train_ts has 1 values for 2 train_seq items"):
        flat_column(bad, "ts")


def test_read_sequences_brings_the_timestamps_when_the_file_has_them(tmp_path: Path) -> None:
    got = read_sequences(_write_sequences(tmp_path / "sequences.parquet", TIMED))
    assert [list(t) for t in got["train_ts"]] == [[10, 10, 10, 20, 30], [30, 30]] and got["valid_ts"].tolist() == [30, 40]
