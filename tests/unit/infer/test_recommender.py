"""The in-process recommender: parity with evaluation, masking, fallback, unknown ids, window."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lite_rec.core.errors import DataError
from lite_rec.eval.evaluate import build_eval_set, iter_eval_batches, model_scorer
from lite_rec.eval.metrics import mask_history_
from lite_rec.eval.popularity import item_popularity
from lite_rec.infer.bundle import save_bundle
from lite_rec.infer.recommender import ContextError, Recommendation, Recommender, RecommendError, UnknownItems
from lite_rec.model.rec_llm import build_model
from lite_rec.model.spec import ModelConfig

N_ITEMS = 12
WINDOW = 4
IDS = [f"m{i:02d}" for i in range(1, N_ITEMS + 1)]  # item_idx i <-> "m0i"
# Training sequences (item_idx); popularity comes from them: 3 x5, 1 x4, 2 x3, ...
SEQUENCES = pd.DataFrame(
    {
        "user_idx": [0, 1, 2, 3],
        "user_id": ["u0", "u1", "u2", "u3"],
        "train_seq": [[1, 2, 3, 4, 5, 6, 7], [3, 1, 2], [3, 1, 8, 9, 10], [3, 1, 3, 2, 11]],
        "valid_item_idx": [8, 4, 5, 6],
        "test_item_idx": [9, 5, 6, 7],
    }
)


def _ids(idx: list[int] | np.ndarray) -> list[str]:
    return [IDS[i - 1] for i in idx]


def _make_recommender(tmp_path: Path, item_repr: str = "text", backbone: str = "lean",
                      history_logit: float | None = None) -> Recommender:
    torch.manual_seed(1)
    cfg = ModelConfig(
        backbone=backbone, pretrained=False, d_model=16, n_layers=1, n_heads=2, d_ff=32, dropout=0.0,
        max_seq_len=WINDOW, item_repr=item_repr, history_logit=history_logit is not None,
    )
    vectors = torch.randn(N_ITEMS + 1, 6)
    vectors[0] = 0
    model, _ = build_model(cfg, N_ITEMS, vectors, causal=False)
    with torch.no_grad():  # random weights give near-flat logits; spread them so rankings are stable
        model.head.weight.mul_(20.0)
        if history_logit is not None:
            model.history_logit_param.fill_(history_logit)
    counts = item_popularity(SEQUENCES, N_ITEMS)[1:].long().tolist()
    path = save_bundle(
        tmp_path / f"bundle-{item_repr}-{backbone}",
        spec=model.spec, state_dict=model.state_dict(),
        items=pd.DataFrame({"item_idx": range(1, N_ITEMS + 1), "item_id": IDS, "title": [f"Title {i}" for i in IDS]}),
        popularity=pd.DataFrame({"item_idx": range(1, N_ITEMS + 1), "count": counts}), dataset="tiny",
    )
    return Recommender.from_path(path)


@pytest.fixture(scope="module")
def rec(tmp_path_factory: pytest.TempPathFactory) -> Recommender:
    return _make_recommender(tmp_path_factory.mktemp("rec"))


def _model_topk(rec: Recommender, history_idx: list[int], k: int, exclude: bool) -> list[int]:
    """Reference: score one user alone, unpadded, straight through the model."""
    with torch.no_grad():
        logits, _ = rec.model(torch.tensor([history_idx[-WINDOW:]]))  # (1, N+1)
    if exclude:
        logits[0, history_idx] = float("-inf")
    return torch.topk(logits[0], k).indices.tolist()


@pytest.mark.parametrize(("item_repr", "backbone"), [("text", "lean"), ("text+id", "t5-small"), ("id", "lean")])
def test_top_k_equals_evaluation_code_path(tmp_path: Path, item_repr: str, backbone: str) -> None:
    """Serving and evaluation must rank identically: same inputs, same mask, same top-k."""
    rec = _make_recommender(tmp_path, item_repr, backbone)
    eval_set = build_eval_set(SEQUENCES, "test")
    scorer = model_scorer(rec.model, device="cpu")
    k = 4  # user 0 has exactly 4 unseen items left: the whole remaining catalog, in order
    expected: list[list[int]] = []
    for inputs, history, targets, _ in iter_eval_batches(eval_set, WINDOW, batch_size=3, device="cpu"):
        scores = scorer(inputs).float()  # (B, N+1)
        mask_history_(scores, history, targets)
        expected += torch.topk(scores, k, dim=1).indices.tolist()
    histories = [_ids(list(s) + [v]) for s, v in zip(SEQUENCES["train_seq"], SEQUENCES["valid_item_idx"])]
    got = rec.recommend(histories, k=k)
    assert [r.item_ids for r in got] == [_ids(e) for e in expected]


def test_learned_history_logit_scores_the_whole_history_as_the_unmasked_evaluation_does(tmp_path: Path) -> None:
    """Unmasked, a model with model.history_logit ranks by its scores plus that logit on every
    item of the whole history (also those before the window), in serving as in evaluation."""
    from lite_rec.infer.fast_path import fast_recommender

    rec = _make_recommender(tmp_path, history_logit=-0.1)  # -1.6 logits: moves some seen items, not all
    eval_set = build_eval_set(SEQUENCES, "test", rec.spec)
    scorer = model_scorer(rec.model, device="cpu")
    k = N_ITEMS
    expected, plain = [], []
    for inputs, history, _, _ in iter_eval_batches(eval_set, WINDOW, batch_size=3, device="cpu"):
        expected += torch.topk(scorer(inputs, history=history).float(), k, dim=1).indices.tolist()
        plain += torch.topk(scorer(inputs).float(), k, dim=1).indices.tolist()
    assert expected != plain  # the logit changes some ranking, so the comparison below means something
    histories = [_ids(list(s) + [v]) for s, v in zip(SEQUENCES["train_seq"], SEQUENCES["valid_item_idx"])]
    got = rec.recommend(histories, k=k, exclude_history=False)
    assert [r.item_ids for r in got] == [_ids(e) for e in expected]
    by_scores = dict(zip(got[0].item_ids, got[0].scores))
    with torch.no_grad():
        raw = rec.model(torch.tensor([[5, 6, 7, 8]]))[0][0]  # user 0's window: the last 4 of 8 items
    assert by_scores["m01"] == pytest.approx(float(raw[1]) - 1.6, abs=1e-4)  # before the window, still scored
    fast = fast_recommender(rec.bundle, "cpu")
    assert [r.item_ids for r in fast.recommend(histories, k=k, exclude_history=False)] == [_ids(e) for e in expected]
    masked = rec.recommend(histories, k=4)  # masked: the seen items are removed as before
    assert all(not set(r.item_ids) & set(h) for r, h in zip(masked, histories))


def test_batch_with_mixed_lengths_equals_one_user_at_a_time(rec: Recommender) -> None:
    histories = [[1, 2], [3], [4, 5, 6, 7], [8, 9, 10]]
    batch = rec.recommend([_ids(h) for h in histories], k=6)
    for h, r in zip(histories, batch):
        assert r.item_ids == _ids(_model_topk(rec, h, 6, exclude=True))
        assert r.fallback is False
    single = rec.recommend([_ids(histories[2])], k=6)[0]
    assert single.scores == pytest.approx(batch[2].scores, abs=1e-5)


def test_history_items_are_excluded_only_when_asked(rec: Recommender) -> None:
    history = _ids([2, 5, 9])
    masked = rec.recommend([history], k=N_ITEMS - 3)[0]
    assert not set(history) & set(masked.item_ids)
    assert len(masked) == N_ITEMS - 3
    kept = rec.recommend([history], k=N_ITEMS, exclude_history=False)[0]
    assert set(history) <= set(kept.item_ids)
    assert kept.scores == sorted(kept.scores, reverse=True)


def test_mask_exhausting_the_catalog_returns_fewer_items_not_masked_ones(rec: Recommender) -> None:
    history = IDS[:10]  # only m11, m12 remain
    got = rec.recommend([history], k=5)[0]
    assert sorted(got.item_ids) == ["m11", "m12"]
    assert all(np.isfinite(got.scores))


def test_results_carry_titles_and_iterate_as_tuples(rec: Recommender) -> None:
    got = rec.recommend([_ids([1, 2])], k=3)[0]
    assert isinstance(got, Recommendation)
    for item_id, score, title in got:
        assert title == f"Title {item_id}"
        assert isinstance(score, float)
    assert got[0] == (got.item_ids[0], got.scores[0], got.titles[0])


def test_unknown_ids_are_named(rec: Recommender) -> None:
    with pytest.raises(UnknownItems, match=r"2 unknown item id\(s\).*'nope'.*'zzz'") as info:
        rec.recommend([["m01", "nope"], ["zzz", "m02", "nope"]], k=3)
    assert info.value.item_ids == ["nope", "zzz"]


def test_ignore_unknown_drops_them_and_reports_them(rec: Recommender) -> None:
    got = rec.recommend([["m01", "nope", "m02"]], k=4, ignore_unknown=True)[0]
    ref = rec.recommend([["m01", "m02"]], k=4)[0]
    assert got.item_ids == ref.item_ids
    assert got.unknown == ["nope"]


def test_empty_history_gets_flagged_popularity_fallback(rec: Recommender) -> None:
    got = rec.recommend([[], _ids([1, 2]), ["only-unknown"]], k=3, ignore_unknown=True)
    # Training counts: item 3 x5, item 1 x4, item 2 x3 -> the fallback list, most popular first.
    assert got[0].fallback is True and got[0].item_ids == ["m03", "m01", "m02"]
    assert got[0].scores == pytest.approx([5 / 20, 4 / 20, 3 / 20])  # shares of the 20 training interactions
    assert got[1].fallback is False
    assert got[2].fallback is True and got[2].item_ids == ["m03", "m01", "m02"] and got[2].unknown == ["only-unknown"]


def test_long_history_keeps_the_most_recent_window(rec: Recommender) -> None:
    long_history = [1, 2, 3, 4, 5, 6, 7, 8]
    got = rec.recommend([_ids(long_history)], k=N_ITEMS, exclude_history=False)[0]
    recent = rec.recommend([_ids(long_history[-WINDOW:])], k=N_ITEMS, exclude_history=False)[0]
    oldest = rec.recommend([_ids(long_history[:WINDOW])], k=N_ITEMS, exclude_history=False)[0]
    assert got.item_ids == recent.item_ids
    assert got.scores == pytest.approx(recent.scores, abs=1e-5)
    assert got.scores != pytest.approx(oldest.scores, abs=1e-5)
    # The mask still covers the whole history, not only the window.
    masked = rec.recommend([_ids(long_history)], k=N_ITEMS)[0]
    assert sorted(masked.item_ids) == _ids([9, 10, 11, 12])


@pytest.mark.parametrize("k", [0, -1, N_ITEMS + 1, 2.5, True])
def test_k_out_of_range_is_a_clear_error(rec: Recommender, k: object) -> None:
    with pytest.raises(RecommendError, match=f"k must be an integer between 1 and {N_ITEMS}"):
        rec.recommend([["m01"]], k=k)  # type: ignore[arg-type]


def test_history_must_be_a_list_not_a_string(rec: Recommender) -> None:
    with pytest.raises(RecommendError, match="each history must be a list of item ids"):
        rec.recommend(["m01"], k=3)  # type: ignore[list-item]


def test_weights_that_do_not_fit_the_architecture_are_refused(tmp_path: Path) -> None:
    rec = _make_recommender(tmp_path)
    bundle = rec.bundle
    tensors = dict(bundle.tensors)
    tensors["head.weight"] = tensors["head.weight"][:, :-1]
    broken = type(bundle)(**{**bundle.__dict__, "tensors": tensors})
    with pytest.raises(DataError, match="weights do not fit the saved architecture"):
        Recommender(broken)


# ---------------------------------------------------------------------------------------------
# Input contexts: events {item_id, ts, rating} and the request time


CTX_ITEMS = 20
CTX_WINDOW = 4  # shorter than most histories: contexts across the window's start count too
CTX_IDS = [f"c{i}" for i in range(1, CTX_ITEMS + 1)]


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> Recommender:
    from tests.helpers.context_models import context_model, save_context_bundle

    model = context_model(n_items=CTX_ITEMS, window=CTX_WINDOW, seed=5)
    return Recommender.from_path(save_context_bundle(tmp_path_factory.mktemp("ctx") / "bundle", model, CTX_IDS))


def _eval_top_k(rec: Recommender, sequences: pd.DataFrame, k: int, with_history: bool = False) -> list[list[str]]:
    """The offline test split's top-k (masked, or unmasked with the history score), as the evaluator ranks it."""
    scorer = model_scorer(rec.model, device="cpu")
    out = []
    for inputs, history, targets, contexts in iter_eval_batches(build_eval_set(sequences, "test", rec.spec), CTX_WINDOW,
                                                                batch_size=4, device="cpu"):
        scores = scorer(inputs, contexts=contexts, **({"history": history} if with_history else {})).float()
        if not with_history:
            mask_history_(scores, history, targets)
        out += [[CTX_IDS[i - 1] for i in row] for row in torch.topk(scores, k, dim=1).indices.tolist()]
    return out


@pytest.mark.parametrize("fast", [False, True], ids=["eager", "fast-path"])
def test_events_at_the_test_time_rank_exactly_as_the_offline_evaluation(ctx: Recommender, fast: bool) -> None:
    """Every test user's train + validation events with request_time = the test item's time get the
    evaluator's top-k (the one context function, context.history_contexts, on both sides), and the
    request time matters: the same events asked for at another time rank otherwise."""
    from lite_rec.infer.fast_path import fast_recommender
    from tests.helpers.context_models import split_events, timed_sequences

    sequences = timed_sequences(CTX_ITEMS)
    histories, times = split_events(sequences, CTX_IDS)
    rec = fast_recommender(ctx.bundle, "cpu") if fast else ctx
    k = 6
    got = rec.recommend(histories, k, request_times=times)
    assert [r.item_ids for r in got] == _eval_top_k(ctx, sequences, k)
    iso = [pd.Timestamp(t, unit="s", tz="UTC").isoformat() for t in times]  # the same instants as ISO-8601
    assert [r.item_ids for r in rec.recommend(histories, k, request_times=iso)] == [r.item_ids for r in got]
    later = rec.recommend(histories, k, request_times=[t + 90 * 86_400 for t in times])
    assert [r.item_ids for r in later] != [r.item_ids for r in got]
    if not fast:  # one user at a time: the same answers (no batch effect)
        assert [rec.recommend([h], k, request_times=[t])[0].item_ids for h, t in zip(histories, times)] == \
            [r.item_ids for r in got]


def test_unmasked_events_rank_with_the_history_score_as_the_offline_evaluation(tmp_path: Path) -> None:
    from tests.helpers.context_models import context_model, save_context_bundle, split_events, timed_sequences

    model = context_model(n_items=CTX_ITEMS, window=CTX_WINDOW, seed=6, item_repr="id", history_logit=True)
    rec = Recommender.from_path(save_context_bundle(tmp_path / "bundle", model, CTX_IDS))
    sequences = timed_sequences(CTX_ITEMS, seed=4)
    histories, times = split_events(sequences, CTX_IDS)
    got = rec.recommend(histories, CTX_ITEMS, exclude_history=False, request_times=times)
    assert [r.item_ids for r in got] == _eval_top_k(rec, sequences, CTX_ITEMS, with_history=True)


def test_the_request_time_defaults_to_the_servers_clock(ctx: Recommender) -> None:
    from tests.helpers.context_models import T0

    history = [{"item_id": "c1", "ts": T0, "rating": 4}, {"item_id": "c2", "ts": T0 + 60, "rating": 2}]
    clock = ctx.clock
    try:
        ctx.clock = lambda: T0 + 3 * 86_400 + 0.7
        now = ctx.recommend([history], 5)[0]
        assert now.item_ids == ctx.recommend([history], 5, request_times=[T0 + 3 * 86_400])[0].item_ids
        ctx.clock = lambda: T0 + 30  # before the last event: the clock is a request time like any other
        with pytest.raises(ContextError, match=r"request_time \(none given: the server's clock\)"):
            ctx.recommend([history], 5)
    finally:
        ctx.clock = clock


def test_unknown_items_are_dropped_with_their_events(ctx: Recommender) -> None:
    from tests.helpers.context_models import T0

    known = [{"item_id": "c3", "ts": T0, "rating": 5}, {"item_id": "c4", "ts": T0 + 7_200, "rating": 1}]
    ghost = {"item_id": "ghost", "ts": T0 + 100, "rating": 3}
    got = ctx.recommend([[known[0], ghost, known[1]]], 5, ignore_unknown=True, request_times=[T0 + 9_000])[0]
    assert got.unknown == ["ghost"]
    assert got.item_ids == ctx.recommend([known], 5, request_times=[T0 + 9_000])[0].item_ids


def _ctx_error(rec: Recommender, history: list, request_time: object = None) -> ContextError:
    with pytest.raises(ContextError) as info:
        rec.recommend([history], 3, request_times=[request_time])
    return info.value


def test_each_missing_or_unusable_context_field_has_its_own_error(ctx: Recommender) -> None:
    from tests.helpers.context_models import T0

    ok = {"item_id": "c1", "ts": T0, "rating": 4}
    cases = [
        ([ok, "c2"], T0 + 10, "ts", "missing", r"history\[1\] \(item 'c2'\) has no ts"),
        ([ok, {"item_id": "c2", "ts": T0 + 5}], T0 + 10, "rating", "missing", r"history\[1\] \(item 'c2'\) has no rating"),
        ([ok, {"item_id": "c2", "ts": T0 - 5, "rating": 3}], T0 + 10, "ts", "out_of_order",
         r"history\[1\]\.ts 978299995 \(2000-12-31T21:59:55Z\) is before history\[0\]\.ts .*oldest first"),
        ([ok, {"item_id": "c2", "ts": "yesterday", "rating": 3}], T0 + 10, "ts", "unparseable",
         r"history\[1\]\.ts: 'yesterday' is not a time"),
        ([ok, {"item_id": "c2", "ts": "2001-01-01T10:00:00", "rating": 3}], T0 + 10**6, "ts", "unparseable", "has no zone"),
        ([ok, {"item_id": "c2", "ts": -1, "rating": 3}], T0 + 10, "ts", "out_of_range", "outside 1970-01-01"),
        ([ok, {"item_id": "c2", "ts": T0 + 5, "rating": 7}], T0 + 10, "rating", "out_of_range", "rating levels 1..5"),
        ([ok, {"item_id": "c2", "ts": T0 + 5, "rating": 0}], T0 + 10, "rating", "out_of_range", "rating levels 1..5"),
        ([ok, {"item_id": "c2", "ts": T0 + 5, "rating": float("nan")}], T0 + 10, "rating", "not_finite", "not a finite"),
        ([ok, {"item_id": "c2", "ts": T0 + 5, "rating": float("inf")}], T0 + 10, "rating", "not_finite", "not a finite"),
        ([ok, {"item_id": "c2", "ts": T0 + 5, "rating": "good"}], T0 + 10, "rating", "not_a_number", "is not a number"),
        ([ok], T0 - 1, "request_time", "before_last_event", r"request_time 978299999 .* is before the last event's ts"),
        ([ok], "soon", "request_time", "unparseable", "'soon' is not a time"),
        ([ok], float("inf"), "request_time", "unparseable", "inf is not a time"),
        ([ok], True, "request_time", "unparseable", "True is not a time"),
        # integer histories take the vectorized reading: its refusals are the per-value path's
        ([ok, {"item_id": "c2", "ts": 10**20, "rating": 3}], T0 + 10, "ts", "out_of_range", "outside 1970-01-01"),
        ([ok, {"item_id": "c2", "ts": 253_402_300_800, "rating": 3}], T0 + 10, "ts", "out_of_range", "outside"),
        ([ok, {"item_id": "c2", "ts": T0 + 5, "rating": 10**400}], T0 + 10, "rating", "out_of_range", "rating levels"),
    ]
    for history, when, field_name, reason, message in cases:
        err = _ctx_error(ctx, history, when)
        assert (err.field, err.reason) == (field_name, reason), (history, when, err)
        assert err.code == ("missing_context" if reason == "missing" else "invalid_context")
        assert re.search(message, str(err)), str(err)
        assert f"model {ctx.version} reads ts, rating, request_time" in str(err)  # names the model and its fields
    batch = pytest.raises(ContextError, ctx.recommend, [[ok], [ok, "c2"]], 3, request_times=[T0 + 10] * 2)
    assert "histories[1][1] (item 'c2') has no ts" in str(batch.value)  # which user of a batch


def test_integer_times_read_in_bulk_give_the_same_rows_as_any_other_form(ctx: Recommender) -> None:
    from tests.helpers.context_models import T0

    def events(ts_of, rating_of) -> list[dict]:  # noqa: ANN001
        return [{"item_id": f"c{i}", "ts": ts_of(T0 + 600 * i), "rating": rating_of(1 + i % 5)} for i in range(1, 6)]

    bulk = ctx.prepare([events(int, int)], request_times=[T0 + 90_000])[0]  # plain ints: the vectorized reading
    for ts_of, rating_of in ((float, float), (str, float), (lambda t: np.int64(t), lambda r: np.float32(r))):
        other = ctx.prepare([events(ts_of, rating_of)], request_times=[T0 + 90_000])[0]  # value by value
        assert np.array_equal(other.indices, bulk.indices)
        assert np.array_equal(other.contexts, bulk.contexts)
    assert bulk.contexts[:, 0].min() > 0  # the rows hold real context ids, not padding


def test_histories_as_columns_read_as_events_do(ctx: Recommender) -> None:
    """``prepare_columns`` (ids with times and ratings beside them, as batch scoring reads a log) gives
    the rows events give, for lists and NumPy arrays alike, and each refusal of a bad value is the
    events' own; a NaN rating in a column is a missing one (how a table holds no value)."""
    from tests.helpers.context_models import T0, split_events, timed_sequences

    histories, times = split_events(timed_sequences(CTX_ITEMS), CTX_IDS)
    ids = [[e["item_id"] for e in h] for h in histories]
    ts = [[e["ts"] for e in h] for h in histories]
    ratings = [[e["rating"] for e in h] for h in histories]
    want = ctx.prepare(histories, request_times=times)
    arrays = ([np.asarray(t, dtype=np.int64) for t in ts], [np.asarray(r, dtype=np.float64) for r in ratings])
    for ts_col, rating_col in ((ts, ratings), arrays):
        got = ctx.prepare_columns(ids, ts_col, rating_col, request_times=times)
        for g, w in zip(got, want, strict=True):
            assert np.array_equal(g.indices, w.indices) and np.array_equal(g.contexts, w.contexts)
    bad = [  # (ts, ratings, field, reason)
        ([T0, T0 - 5], [4, 3], "ts", "out_of_order"),
        ([T0, "yesterday"], [4, 3], "ts", "unparseable"),
        (np.array([T0, -1]), [4, 3], "ts", "out_of_range"),
        ([T0, None], [4, 3], "ts", "missing"),
        ([T0, T0 + 5], np.array([4.0, 7.0]), "rating", "out_of_range"),
        ([T0, T0 + 5], np.array([4.0, np.nan]), "rating", "missing"),
        ([T0, T0 + 5], [4, float("inf")], "rating", "not_finite"),
    ]
    for ts_values, rating_values, field_name, reason in bad:
        with pytest.raises(ContextError) as info:
            ctx.prepare_columns([["c1", "c2"]], [ts_values], [rating_values], request_times=[T0 + 10])
        assert (info.value.field, info.value.reason) == (field_name, reason), (ts_values, rating_values, info.value)
    with pytest.raises(ContextError) as info:  # no times at all for a model that reads them
        ctx.prepare_columns([["c1", "c2"]], None, [[4, 3]], request_times=[T0 + 10])
    assert (info.value.field, info.value.reason) == ("ts", "missing")
    with pytest.raises(RecommendError, match=r"history: 2 item ids and 1 ts values; they must align"):
        ctx.prepare_columns([["c1", "c2"]], [[T0]], [[4, 3]], request_times=[T0 + 10])


def test_an_ids_only_model_takes_plain_ids_and_events_alike_and_ignores_the_fields(rec: Recommender) -> None:
    assert rec.context_fields == []
    plain = rec.recommend([["m01", "m05", "m07"]], 6)[0]
    events = [{"item_id": "m01", "ts": "not a time", "rating": 99}, {"item_id": "m05"}, {"item_id": "m07", "ts": 3}]
    assert rec.recommend([events], 6, request_times=["whenever"])[0].item_ids == plain.item_ids
    assert rec.recommend([["m01", events[1], "m07"]], 6)[0].item_ids == plain.item_ids  # mixed entries too
    assert rec.prepare([events])[0].contexts is None


def test_events_must_be_events(rec: Recommender) -> None:
    with pytest.raises(RecommendError, match=r"history\[0\] has no item_id"):
        rec.recommend([[{"ts": 5}]], 3)
    with pytest.raises(RecommendError, match=r"history\[1\] has unknown field\(s\) \['when'\]"):
        rec.recommend([["m01", {"item_id": "m02", "when": 5}]], 3)
    with pytest.raises(RecommendError, match="item ids must be strings"):
        rec.recommend([[{"item_id": 1.5}]], 3)


def test_a_frame_carries_events_and_request_times_per_row(ctx: Recommender) -> None:
    from lite_rec.infer.frames import recommend_frame
    from tests.helpers.context_models import split_events, timed_sequences

    histories, times = split_events(timed_sequences(CTX_ITEMS), CTX_IDS)
    frame = pd.DataFrame({"history": histories[:3], "k": 4, "request_time": [times[0], float(times[1]), None]})
    clock = ctx.clock
    try:
        ctx.clock = lambda: times[2]
        out = recommend_frame(ctx, frame)
    finally:
        ctx.clock = clock
    assert out["item_ids"].tolist() == [r.item_ids for r in ctx.recommend(histories[:3], 4, request_times=times[:3])]
    bad = frame.assign(history=[histories[0], [*histories[1], "c1"], []], request_time=times[:3])
    with pytest.raises(ContextError, match=r"histories\[1\]\[\d+\] \(item 'c1'\) has no ts"):
        recommend_frame(ctx, bad)  # the frame's row, not the row within its options group


def test_right_padding_keeps_each_rows_last_entries_then_zeros() -> None:
    """The batch the model reads: row b = the last `width` entries of history b, then zeros; context
    rows (n, C) likewise; an empty history is all zeros."""
    from lite_rec.infer.recommender import right_padded

    rows = [np.array([5, 6, 7, 8]), np.array([], dtype=np.int64), np.array([9])]
    assert right_padded(rows, 3).tolist() == [[6, 7, 8], [0, 0, 0], [9, 0, 0]]
    assert right_padded(rows, 5, keep_last=False).tolist() == [[5, 6, 7, 8, 0], [0] * 5, [9, 0, 0, 0, 0]]
    contexts = [np.arange(6).reshape(3, 2), np.arange(10, 12).reshape(1, 2)]
    got = right_padded(contexts, 2)
    assert got.shape == (2, 2, 2) and got.dtype == np.int64
    assert got.tolist() == [[[2, 3], [4, 5]], [[10, 11], [0, 0]]]
