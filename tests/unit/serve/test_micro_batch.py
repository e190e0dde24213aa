"""Micro-batching: concurrent requests are scored together and each gets exactly its own answer;
one user's bad input fails that user alone."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from lite_rec.infer.recommender import Recommender, RecommendError, UnknownItems
from lite_rec.serve.micro_batch import MicroBatcher
from tests.helpers.tiny_models import save_tiny_bundle, tiny_model

N_ITEMS = 30
IDS = [f"s{i}" for i in range(1, N_ITEMS + 1)]


@pytest.fixture(scope="module")
def rec(tmp_path_factory: pytest.TempPathFactory) -> Recommender:
    model = tiny_model(n_items=N_ITEMS, window=5, seed=4, n_layers=1)
    return Recommender.from_path(save_tiny_bundle(tmp_path_factory.mktemp("mb") / "bundle", model, IDS))


def _concurrently(batcher: MicroBatcher, calls: list[dict], rec: Recommender) -> list[object]:
    """Queue every call while the model is held busy, then release: they must coalesce."""
    out: list[object] = [None] * len(calls)
    release = threading.Event()
    holding = threading.Event()

    def hold() -> None:
        batcher.exclusive(lambda: (holding.set(), release.wait(10)))

    def call(i: int) -> None:
        try:
            out[i] = batcher.recommend(rec, **calls[i])
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            out[i] = exc

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(10)
    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    while True:  # every call has queued (strict ones validated first)
        with batcher._cv:
            queued = len(batcher._queue)
        errors = sum(isinstance(o, Exception) for o in out)
        if queued + errors == len(calls):
            break
        time.sleep(0.001)
    release.set()
    for t in [holder, *threads]:
        t.join(10)
    return out


def test_concurrent_requests_share_one_forward_pass_and_get_their_own_answers(rec: Recommender) -> None:
    rng = np.random.default_rng(0)
    histories = [[IDS[i] for i in rng.choice(N_ITEMS, int(rng.integers(0, 9)), replace=False)] for _ in range(10)]
    batcher = MicroBatcher(max_users=16)
    got = _concurrently(batcher, [{"history": h, "k": 5} for h in histories], rec)
    assert batcher.batches == 1  # all ten in one forward pass (the hold is not a micro-batch)
    assert batcher.users == 10
    for h, g in zip(histories, got):
        want = rec.recommend([h], 5)[0]
        assert g.item_ids == want.item_ids and g.fallback == want.fallback  # type: ignore[union-attr]
        assert g.scores == pytest.approx(want.scores, abs=1e-4)  # type: ignore[union-attr]


def test_options_are_never_mixed_within_a_batch(rec: Recommender) -> None:
    h = IDS[:4]
    calls = [{"history": h, "k": 3}, {"history": h, "k": 7}, {"history": h, "k": 3, "exclude_history": False}]
    got = _concurrently(MicroBatcher(8), calls, rec)
    assert [len(g) for g in got] == [3, 7, 3]  # type: ignore[arg-type]
    assert got[0].item_ids == rec.recommend([h], 3)[0].item_ids  # type: ignore[union-attr]
    assert got[2].item_ids == rec.recommend([h], 3, exclude_history=False)[0].item_ids  # type: ignore[union-attr]
    assert not set(h) & set(got[1].item_ids)  # type: ignore[union-attr]


def test_one_users_unknown_id_fails_that_user_alone(rec: Recommender) -> None:
    calls = [{"history": [IDS[0], "ghost"], "k": 3}, {"history": [IDS[1]], "k": 3},
             {"history": [IDS[2], "ghost"], "k": 3, "ignore_unknown": True}]
    got = _concurrently(MicroBatcher(8), calls, rec)
    assert isinstance(got[0], UnknownItems) and got[0].item_ids == ["ghost"]
    assert got[1].item_ids == rec.recommend([[IDS[1]]], 3)[0].item_ids  # type: ignore[union-attr]
    assert got[2].unknown == ["ghost"] and got[2].item_ids == rec.recommend([[IDS[2]]], 3)[0].item_ids  # type: ignore[union-attr]


def test_one_users_invalid_id_fails_that_user_alone_also_when_unknown_ids_are_ignored(rec: Recommender) -> None:
    calls = [{"history": [IDS[0], "\ud800"], "k": 3, "ignore_unknown": True}, {"history": [IDS[1], "ghost"], "k": 3, "ignore_unknown": True}]
    got = _concurrently(MicroBatcher(8), calls, rec)
    assert isinstance(got[0], RecommendError) and "surrogate" in str(got[0])
    assert got[1].unknown == ["ghost"] and got[1].item_ids == rec.recommend([[IDS[1]]], 3)[0].item_ids  # type: ignore[union-attr]


def test_max_users_splits_a_long_queue_oldest_first(rec: Recommender) -> None:
    sizes: list[int] = []
    batcher = MicroBatcher(max_users=3, on_batch=sizes.append)
    got = _concurrently(batcher, [{"history": [IDS[i]], "k": 2} for i in range(7)], rec)
    assert sizes == [3, 3, 1]  # the queue in chunks of 3, oldest first
    assert all(g.item_ids == rec.recommend([[IDS[i]]], 2)[0].item_ids for i, g in enumerate(got))  # type: ignore[union-attr]


def test_bad_k_is_refused_before_queueing(rec: Recommender) -> None:
    batcher = MicroBatcher()
    with pytest.raises(RecommendError, match="k must be"):
        batcher.recommend(rec, [IDS[0]], 0)
    with pytest.raises(ValueError, match="max_users"):
        MicroBatcher(0)
    assert batcher.batches == 0
