"""Input contexts (model.time_gaps, model.ratings, model.time_bias, model.query_time): hand-computed
gaps, ratings, time buckets, next gaps, their batches and their evaluation inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from lite_rec.core.errors import DataError
from lite_rec.data.sequences import build_sequence_store
from lite_rec.eval.evaluate import build_eval_set, iter_eval_batches
from lite_rec.model.context import (
    CONTEXT_ID,
    CONTEXT_NEXT_GAP,
    CONTEXT_TIME,
    N_GAPS,
    TIME_BUCKETS,
    context_ids,
    context_table,
    gap_index,
    item_contexts,
    n_contexts,
    next_gap_index,
    rating_index,
    time_bucket,
)
from lite_rec.model.spec import ModelConfig, ModelSpec
from lite_rec.train.batches import BatchMaker, plan_onepass

HOUR, DAY = 3_600, 86_400
SEQUENCES = pd.DataFrame({"user_idx": [0], "train_seq": [[1, 2, 3]], "valid_item_idx": [4], "test_item_idx": [5],
                          "train_ts": [[0, 0, 100]], "valid_ts": [100 + DAY], "test_ts": [100 + DAY + 30],
                          "train_rating": [[5.0, 1.0, 3.0]], "valid_rating": [4.0]})


def test_gap_index_of_hand_computed_gaps() -> None:
    # user 0: gaps 0 s, 1 s, 14 s, 80 s, 4,900 s, 85,000 s, 2 days, 10 days, 40 days; user 1: 0 s
    times = build_sequence_store([[5, 5, 6, 20, 100, 5_000, 90_000, 90_000 + 2 * DAY, 90_000 + 12 * DAY,
                                   90_000 + 52 * DAY], [1, 1]])
    got = gap_index(times).tolist()
    assert got == [0, 1, 2, 3, 4, 6, 6, 7, 8, 9, 0, 1]  # 0 = a user's first item
    assert max(got) == N_GAPS - 1
    assert gap_index(build_sequence_store([[0, HOUR - 1], [0, HOUR]])).tolist() == [0, 5, 0, 6]  # the edge
    with pytest.raises(ValueError, match="backwards at flat position 2"):
        gap_index(build_sequence_store([[1], [5, 3]]))


def test_ratings_and_their_combination_with_gaps() -> None:
    ratings = build_sequence_store([[1.0, 5.0, 3.4]], np.float64)
    assert rating_index(ratings).tolist() == [0, 4, 2]
    times = build_sequence_store([[0, 0, 20]])  # gap index 0, 1, 3
    assert context_ids(times, None).tolist() == [1, 2, 4]
    assert context_ids(None, ratings).tolist() == [1, 5, 3]
    assert context_ids(times, ratings).tolist() == [1 + 0 * 5 + 0, 1 + 1 * 5 + 4, 1 + 3 * 5 + 2]
    assert n_contexts(True, True) == 1 + N_GAPS * 5 > max(context_ids(times, ratings))
    assert n_contexts(True, False) == 1 + N_GAPS and n_contexts(False, True) == 6
    missing = build_sequence_store([[1.0, np.nan]], np.float64)
    with pytest.raises(ValueError, match="rating missing at flat position 1"):
        rating_index(missing)


def test_time_buckets_of_hand_computed_intervals() -> None:
    seconds = torch.tensor([0, 1, 2, 3, 4, HOUR, DAY, 365 * DAY, 2**40])
    assert time_bucket(seconds).tolist() == [0, 1, 2, 2, 3, 12, 17, 25, TIME_BUCKETS - 1]  # 1 + floor(log2 s)
    assert time_bucket(torch.tensor([[2**20 - 1, 2**20]])).tolist() == [[20, 21]]  # the edge, exactly


def test_time_buckets_equal_one_plus_floor_log2_at_every_edge() -> None:
    """Either side of every power of two up to 2**40 s, and random gaps: 1 + floor(log2 s) (exact
    integer bit length), capped at the last bucket, 0 for 0 s."""
    edges = [v for k in range(41) for v in (2**k - 1, 2**k, 2**k + 1)]
    seconds = torch.tensor(edges + torch.randint(0, 2**40, (2000,), generator=torch.Generator().manual_seed(0)).tolist())
    want = [min(int(v).bit_length(), TIME_BUCKETS - 1) for v in seconds.tolist()]  # bit_length = 1 + floor(log2 v); 0 for 0
    assert time_bucket(seconds).tolist() == want


def test_context_table_holds_the_id_and_the_time_of_each_item() -> None:
    times, ratings = build_sequence_store([[0, 0, 20]]), build_sequence_store([[1.0, 5.0, 3.0]], np.float64)
    both = context_table(times, ratings, times)
    assert both[:, CONTEXT_ID].tolist() == context_ids(times, ratings).tolist() and both[:, CONTEXT_TIME].tolist() == [0, 0, 20]
    assert context_table(None, None, times).tolist() == [[0, 0, 0], [0, 0, 0], [0, 20, 0]]  # time only: no id
    assert context_table(times, None, None)[:, CONTEXT_TIME].tolist() == [0, 0, 0]  # gaps only: no time
    assert context_table(None, None, None, np.array([2, 3, 0])).tolist() == [[0, 0, 2], [0, 0, 3], [0, 0, 0]]
    with pytest.raises(ValueError, match="at least one feature"):
        context_table(None, None, None)
    with pytest.raises(ValueError, match=r"differ in length \(\[2, 3\] items\)"):
        context_table(times, None, None, np.array([1, 1]))


def test_next_gap_index_of_hand_computed_gaps_and_query_times() -> None:
    # user 0: next gaps 0 s, 20 s, then its last item; user 1: 2 days, then its last item
    times = build_sequence_store([[0, 0, 20], [5, 5 + 2 * DAY]])
    assert next_gap_index(times).tolist() == [1, 3, 0, 7, 0]  # last items: unknown (training)
    # the query times after each user's last item: 1 hour later (bucket 6), the same second (bucket 1)
    assert next_gap_index(times, np.array([20 + HOUR, 5 + 2 * DAY])).tolist() == [1, 3, 6, 7, 1]
    floored = next_gap_index(times, np.array([20 + HOUR, 5 + 2 * DAY]), floor=HOUR)  # under an hour: one bucket
    assert floored.tolist() == [1, 1, 6, 7, 1]
    with pytest.raises(ValueError, match="before the item's at flat position 4"):
        next_gap_index(times, np.array([20, 4]))  # a query before the user's last input
    with pytest.raises(ValueError, match="1 query times for 2 users"):
        next_gap_index(times, np.array([20]))


def test_batches_carry_the_contexts_of_their_window_even_across_the_window_start() -> None:
    store = build_sequence_store([[1, 2, 3, 4, 5]])
    times = build_sequence_store([[0, 0, 20, 20, 20 + DAY]])
    contexts = context_table(times, None, times)  # ids [1, 2, 4, 2, 8]
    maker = BatchMaker(store, 2, contexts=contexts)
    maker.set_plan(plan_onepass(store, 2), np.arange(2))
    items, _ = maker.batch(0, 2)
    assert items.tolist() == [[1, 2], [3, 4]]
    batch = maker.batch_contexts(0, 2)  # (B, L, C)
    assert batch[..., CONTEXT_ID].tolist() == [[1, 2], [4, 2]]  # item 3's gap is to item 2, before its window
    assert batch[..., CONTEXT_TIME].tolist() == [[0, 0], [20, 20]]
    assert batch[..., CONTEXT_NEXT_GAP].tolist() == [[0, 0], [0, 0]]  # not read: zeros
    with pytest.raises(ValueError, match="3 context rows for 5 items"):
        BatchMaker(store, 2, contexts=contexts[:3])


def _spec(time_gaps: bool, ratings: bool, time_bias: bool = False, query_time: bool = False) -> ModelSpec:
    from lite_rec.model.backbone import BackboneSpec

    config = ModelConfig(backbone="lean", d_model=8, n_layers=1, n_heads=2, d_ff=8, dropout=0.0, item_repr="id",
                         max_seq_len=3, time_gaps=time_gaps, ratings=ratings, time_bias=time_bias, query_time=query_time)
    return ModelSpec(n_items=5, item_dim=0, causal=True, config=config,
                     backbone=BackboneSpec(kind="lean", d_model=8, n_layers=1, n_heads=2, d_ff=8, dropout=0.0))


def test_the_test_split_reads_the_validation_items_context_too() -> None:
    [batch] = list(iter_eval_batches(build_eval_set(SEQUENCES, "test", _spec(True, False, True)), 3, 8, "cpu"))
    assert batch.inputs.tolist() == [[2, 3, 4]] and batch.contexts[..., CONTEXT_ID].tolist() == [[2, 5, 8]]
    assert batch.contexts[..., CONTEXT_TIME].tolist() == [[0, 100, 100 + DAY]]
    [valid] = list(iter_eval_batches(build_eval_set(SEQUENCES, "valid", _spec(True, True)), 4, 8, "cpu"))
    assert valid.contexts[..., CONTEXT_ID].tolist() == [[1 + 4, 1 + 5 + 0, 1 + 4 * 5 + 2, 0]]  # right-padded like the items
    assert valid.contexts[..., CONTEXT_TIME].tolist() == [[0, 0, 0, 0]]  # time not read: zeros
    assert next(iter(iter_eval_batches(build_eval_set(SEQUENCES, "valid"), 4, 8, "cpu"))).contexts is None
    assert item_contexts(SEQUENCES, time_gaps=False, ratings=False) is None


def test_each_split_reads_its_own_targets_time_as_the_query_time_and_training_none() -> None:
    # train times 0, 0, 100; validation item at 100 + 1 day; test item 30 s after it
    [valid] = list(iter_eval_batches(build_eval_set(SEQUENCES, "valid", _spec(False, False, query_time=True)), 3, 8, "cpu"))
    assert valid.contexts[..., CONTEXT_NEXT_GAP].tolist() == [[1, 4, 7]]  # 0 s, 100 s, then 1 day to the validation item
    [test] = list(iter_eval_batches(build_eval_set(SEQUENCES, "test", _spec(False, False, query_time=True)), 3, 8, "cpu"))
    assert test.inputs.tolist() == [[2, 3, 4]] and test.contexts[..., CONTEXT_NEXT_GAP].tolist() == [[4, 7, 3]]  # 30 s
    training = item_contexts(SEQUENCES, time_gaps=False, ratings=False, query_time=True)
    assert training[:, CONTEXT_NEXT_GAP].tolist() == [1, 4, 0]  # the last item's next time is not read in training
    assert item_contexts(SEQUENCES, time_gaps=False, ratings=False, query_time=True, with_valid=True)[
        :, CONTEXT_NEXT_GAP].tolist() == [1, 4, 7, 0]  # no query split: the validation item is the last, unknown
    assert item_contexts(SEQUENCES, time_gaps=False, ratings=False, query_time=True, query_gap_floor=HOUR, with_valid=True,
                         query="test")[:, CONTEXT_NEXT_GAP].tolist() == [1, 1, 7, 1]  # 100 s and 30 s: under the floor
    with pytest.raises(DataError, match="no column test_ts; model.query_time needs it"):
        build_eval_set(SEQUENCES.drop(columns=["test_ts"]), "test", _spec(False, False, query_time=True))
    early = SEQUENCES.assign(test_ts=[50])  # a test item before the validation item's time
    with pytest.raises(DataError, match="sequences.parquet: model.query_time: the next time lies before"):
        build_eval_set(early, "test", _spec(False, False, query_time=True))


def test_a_file_without_the_columns_says_to_rerun_the_data_stage() -> None:
    old = SEQUENCES.drop(columns=["train_rating", "valid_rating"])
    with pytest.raises(DataError, match=r"no column\(s\) train_rating, valid_rating.*re-run `lite-rec ingest"):
        item_contexts(old, time_gaps=True, ratings=True)
    assert item_contexts(old, time_gaps=True, ratings=False).tolist() == [[1, 0, 0], [2, 0, 0], [5, 0, 0]]
    assert item_contexts(old, time_gaps=False, ratings=False, time_bias=True).tolist() == [[0, 0, 0], [0, 0, 0], [0, 100, 0]]
    assert item_contexts(old, time_gaps=True, ratings=False, time_bias=True, with_valid=True)[:, CONTEXT_TIME].tolist() == [
        0, 0, 100, 100 + DAY]


def test_context_fields_name_what_a_request_must_carry() -> None:
    from lite_rec.model.context import context_fields

    def fields(**flags: bool) -> list[str]:
        return context_fields(ModelConfig(backbone="lean", **flags))

    assert fields() == []
    assert fields(time_gaps=True) == fields(time_bias=True) == ["ts"]
    assert fields(ratings=True) == ["rating"]
    assert fields(query_time=True) == ["ts", "request_time"]
    assert fields(time_gaps=True, ratings=True, time_bias=True, query_time=True) == ["ts", "rating", "request_time"]


def test_serving_builds_a_histories_contexts_with_the_evaluations_function() -> None:
    """history_contexts on one user's raw times, ratings and request time (what serving has) gives the
    rows item_contexts gives the offline test split (the target's time as the request time)."""
    from lite_rec.model.context import history_contexts

    features = dict(time_gaps=True, ratings=True, time_bias=True, query_time=True, query_gap_floor=HOUR)
    offline = item_contexts(SEQUENCES, **features, with_valid=True, query="test")
    row = SEQUENCES.iloc[0]
    live = history_contexts(build_sequence_store([[*row["train_ts"], row["valid_ts"]]]),
                            build_sequence_store([[*row["train_rating"], row["valid_rating"]]], np.float64),
                            np.array([row["test_ts"]]), **features)
    np.testing.assert_array_equal(live, offline)
    assert live[-1, CONTEXT_NEXT_GAP] == 1  # 30 s to the request: under the floor, read as no gap
    later = history_contexts(build_sequence_store([[*row["train_ts"], row["valid_ts"]]]), None,
                             np.array([row["valid_ts"] + 2 * HOUR]), time_gaps=True, ratings=False, query_time=True,
                             query_gap_floor=HOUR)
    assert later[-1, CONTEXT_NEXT_GAP] == 6  # two hours: a new visit, read
    assert history_contexts(None, None, None, time_gaps=False, ratings=False) is None
