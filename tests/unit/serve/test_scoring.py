"""Batch scoring: the Parquet file DuckDB reads holds exactly the Recommender's top-k per user,
written atomically, from processed data, frames or interaction logs."""

from __future__ import annotations

import time
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest

from lite_rec.core.config import LiteRecConfig, build_config
from lite_rec.core.errors import DataError
from lite_rec.infer.bundle import load_bundle
from lite_rec.infer.recommender import ContextError, Recommender
from lite_rec.serve.scoring import default_scores_path, load_histories, read_histories, score_users
from tests.helpers.tiny_models import save_tiny_bundle, tiny_model

N_ITEMS = 25
IDS = [f"x{i}" for i in range(1, N_ITEMS + 1)]
SEQUENCES = pd.DataFrame(
    {
        "user_idx": [0, 1, 2, 3],
        "user_id": ["alice", "bob", "carol", "dave"],
        "train_seq": [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11, 12, 13], [2, 4, 6]],
        "valid_item_idx": [4, 11, 14, 8],
        "test_item_idx": [5, 12, 15, 10],
    }
)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = tiny_model(n_items=N_ITEMS, window=4, seed=5, n_layers=1)
    return save_tiny_bundle(tmp_path_factory.mktemp("scoring") / "bundle", model, IDS)


@pytest.fixture(scope="module")
def rec(bundle_dir: Path) -> Recommender:
    return Recommender.from_path(bundle_dir)


@pytest.fixture()
def cfg(tmp_path: Path) -> LiteRecConfig:
    cfg = build_config("ml-100k", {"data_dir": str(tmp_path / "data")})
    cfg.processed_dir.mkdir(parents=True)
    SEQUENCES.to_parquet(cfg.processed_dir / "sequences.parquet", index=False)
    pd.DataFrame({"item_idx": range(1, N_ITEMS + 1), "item_id": IDS, "title": IDS}).to_parquet(cfg.processed_dir / "items.parquet")
    return cfg


def _rows(path: Path) -> list[tuple]:
    return duckdb.sql(f"select user_id, rank, item_id, score from read_parquet('{path}') order by user_id, rank").fetchall()


def test_histories_from_processed_data_are_every_known_item_in_order(cfg: LiteRecConfig) -> None:
    frame = load_histories(cfg)
    assert frame["user_id"].tolist() == ["alice", "bob", "carol", "dave"]
    assert frame["history"].tolist()[0] == ["x1", "x2", "x3", "x4", "x5"]  # train, then valid, then test
    assert frame["history"].tolist()[2] == ["x11", "x12", "x13", "x14", "x15"]


def test_parquet_holds_the_recommender_top_k_for_every_user(cfg: LiteRecConfig, rec: Recommender, tmp_path: Path) -> None:
    out = tmp_path / "scores" / "topk.parquet"
    result = score_users(rec, cfg, out, k=5, batch_size=3, progress=False)
    assert (result.users, result.rows, result.fallback_users, result.unknown_items) == (4, 20, 0, 0)
    rows = _rows(out)
    assert duckdb.sql(f"select count(distinct user_id), min(rank), max(rank) from '{out}'").fetchall() == [(4, 1, 5)]
    histories = load_histories(cfg)
    want = rec.recommend(histories["history"].tolist(), 5)
    by_user = {u: r for u, r in zip(histories["user_id"], want)}
    for user in by_user:
        mine = [(i, s) for u, _, i, s in rows if u == user]
        assert [i for i, _ in mine] == by_user[user].item_ids
        assert [s for _, s in mine] == pytest.approx(by_user[user].scores)
        assert not {i for i, _ in mine} & set(histories.set_index("user_id").loc[user, "history"])  # history masked
    schema = duckdb.sql(f"describe select * from '{out}'").fetchall()
    assert [(c[0], c[1]) for c in schema] == [("user_id", "VARCHAR"), ("rank", "INTEGER"), ("item_id", "VARCHAR"), ("score", "DOUBLE")]
    assert list(tmp_path.joinpath("scores").iterdir()) == [out]  # no temp file left behind


def test_user_list_keeps_those_users_in_order_and_names_missing_ones(cfg: LiteRecConfig, bundle_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "some.parquet"
    result = score_users(str(bundle_dir), cfg, out, k=3, user_ids=["dave", "alice"], progress=False, device="cpu")
    assert result.users == 2 and result.model == str(bundle_dir)
    assert duckdb.sql(f"select distinct user_id from '{out}'").fetchall() and {r[0] for r in _rows(out)} == {"dave", "alice"}
    assert pd.read_parquet(out)["user_id"].tolist()[:3] == ["dave"] * 3  # the order asked for
    with pytest.raises(DataError, match="not in the histories.*'zoe'"):
        score_users(str(bundle_dir), cfg, tmp_path / "x.parquet", k=3, user_ids=["alice", "zoe"], progress=False)


def test_interaction_log_is_grouped_by_user_in_time_order(rec: Recommender, tmp_path: Path) -> None:
    log = pd.DataFrame({"user_id": ["u1", "u2", "u1", "u1", "u2"], "item_id": ["x9", "x3", "x1", "x2", "ghost"], "ts": [30, 5, 10, 20, 6]})
    frame = read_histories(log)
    assert frame.set_index("user_id")["history"].to_dict() == {"u2": ["x3", "ghost"], "u1": ["x1", "x2", "x9"]}
    log_path = tmp_path / "log.parquet"
    log.to_parquet(log_path)
    out = tmp_path / "log-scores.parquet"
    result = score_users(rec, log_path, out, k=4, progress=False)
    assert (result.users, result.unknown_items) == (2, 1)  # "ghost" is dropped, not fatal
    got = pd.read_parquet(out)
    assert got[got.user_id == "u1"]["item_id"].tolist() == rec.recommend([["x1", "x2", "x9"]], 4)[0].item_ids


def test_users_without_known_items_get_the_popularity_fallback(rec: Recommender, tmp_path: Path) -> None:
    frame = pd.DataFrame({"user_id": ["new", "ghostly"], "history": [[], ["nope"]]})
    result = score_users(rec, frame, tmp_path / "fb.parquet", k=3, progress=False)
    assert result.fallback_users == 2
    assert pd.read_parquet(tmp_path / "fb.parquet")["item_id"].tolist() == ["x1", "x2", "x3"] * 2


class _CrashesOnSecondBatch(Recommender):
    """Fault injection: the real recommender, dying midway like a run killed by OOM."""

    calls = 0

    def recommend_prepared(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls == 2:
            raise MemoryError("simulated crash in batch 2")
        return super().recommend_prepared(*args, **kwargs)


def test_a_failed_run_leaves_the_previous_file_untouched(rec: Recommender, bundle_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "topk.parquet"
    good = pd.DataFrame({"user_id": ["a", "b", "c"], "history": [["x1"], ["x2"], ["x3"]]})
    score_users(rec, good, out, k=2, progress=False)
    before = out.read_bytes()
    with pytest.raises(MemoryError, match="batch 2"):
        score_users(_CrashesOnSecondBatch(load_bundle(bundle_dir)), good, out, k=3, batch_size=2, progress=False)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["topk.parquet"]  # the partial temp file is gone
    with pytest.raises(DataError, match="k must be between 1 and 25"):
        score_users(rec, good, out, k=26, progress=False)
    with pytest.raises(DataError, match=r"\['c'\] is not a list"):
        score_users(rec, pd.DataFrame({"user_id": ["a", "c"], "history": [["x1"], "x3"]}), out, k=2, progress=False)
    assert out.read_bytes() == before


def test_progress_bar_and_default_path(cfg: LiteRecConfig, rec: Recommender, capfd: pytest.CaptureFixture[str]) -> None:
    out = default_scores_path(cfg)
    assert out == cfg.data_dir / "scores" / "ml-100k" / "topk.parquet"
    result = score_users(rec, cfg, out, k=2, progress=True)
    err = capfd.readouterr().err
    assert "score" in err and "4/4" in err  # tqdm's bar on stderr
    assert out.exists() and "4 users" in result.summary()


def test_model_must_be_given_histories_unless_it_is_a_config(rec: Recommender, bundle_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="pass histories"):
        score_users(rec, None, tmp_path / "x.parquet", progress=False)
    with pytest.raises(DataError, match="user_id"):
        read_histories(pd.DataFrame({"who": ["a"], "history": [["x1"]]}))
    assert load_bundle(bundle_dir).num_items == N_ITEMS


# ---------------------------------------------------------------------------------------------
# A model that reads events and the request time


@pytest.fixture(scope="module")
def ctx_rec(tmp_path_factory: pytest.TempPathFactory) -> Recommender:
    from tests.helpers.context_models import context_model, save_context_bundle

    return Recommender.from_path(save_context_bundle(tmp_path_factory.mktemp("scoring-ctx") / "bundle",
                                                     context_model(n_items=N_ITEMS, window=4, seed=9), IDS))


def test_a_log_with_times_and_ratings_is_scored_as_events_at_as_of(ctx_rec: Recommender, tmp_path: Path) -> None:
    from tests.helpers.context_models import T0

    log = pd.DataFrame({"user_id": ["u1", "u2", "u1", "u1", "u2"], "item_id": ["x9", "x3", "x1", "x2", "x4"],
                        "ts": pd.to_datetime([T0 + 900, T0, T0, T0 + 30, T0 + 5], unit="s"),  # naive datetimes: UTC
                        "rating": [4.0, 2.0, 5.0, None, 1.0]})
    frame = read_histories(log)
    assert frame.set_index("user_id")["ts"].to_dict() == {"u2": [T0, T0 + 5], "u1": [T0, T0 + 30, T0 + 900]}
    as_of = T0 + 2 * 86_400
    with pytest.raises(ContextError, match=r"histories\['u1'\]\[1\] \(item 'x2'\) has no rating"):  # u1's second one
        score_users(ctx_rec, log, tmp_path / "x.parquet", k=3, progress=False, as_of=as_of)
    log.loc[3, "rating"] = 3.0
    out = tmp_path / "ctx.parquet"
    result = score_users(ctx_rec, log, out, k=3, progress=False, as_of="2001-01-02T22:00:00Z")  # = as_of, as ISO-8601
    assert result.users == 2 and pq.read_schema(out).metadata[b"lite_rec.as_of"] == b"2001-01-02T22:00:00Z"
    events = {"u1": [{"item_id": "x1", "ts": T0, "rating": 5.0}, {"item_id": "x2", "ts": T0 + 30, "rating": 3.0},
                     {"item_id": "x9", "ts": T0 + 900, "rating": 4.0}],
              "u2": [{"item_id": "x3", "ts": T0, "rating": 2.0}, {"item_id": "x4", "ts": T0 + 5, "rating": 1.0}]}
    got = pd.read_parquet(out)
    for user, history in events.items():
        assert got[got.user_id == user]["item_id"].tolist() == ctx_rec.recommend([history], 3, request_times=[as_of])[0].item_ids
    with pytest.raises(DataError, match="as_of"):
        score_users(ctx_rec, log, out, k=3, progress=False, as_of="someday")


def test_processed_data_gives_every_users_events_and_now_is_the_default_request_time(cfg: LiteRecConfig, ctx_rec: Recommender,
                                                                                      tmp_path: Path) -> None:
    from tests.helpers.context_models import T0

    timed = SEQUENCES.assign(
        train_ts=[[T0 + 60 * i for i in range(len(s))] for s in SEQUENCES["train_seq"]], valid_ts=T0 + 3_600,
        test_ts=T0 + 7_200, train_rating=[[3.0] * len(s) for s in SEQUENCES["train_seq"]], valid_rating=4.0, test_rating=5.0)
    timed.to_parquet(cfg.processed_dir / "sequences.parquet", index=False)
    frame = load_histories(cfg)
    assert frame["history"].tolist()[0] == ["x1", "x2", "x3", "x4", "x5"]  # train, then valid, then test
    assert frame["ts"].tolist()[0] == [T0, T0 + 60, T0 + 120, T0 + 3_600, T0 + 7_200]
    assert frame["rating"].tolist()[0] == [3.0, 3.0, 3.0, 4.0, 5.0]
    clock = ctx_rec.clock
    out = tmp_path / "now.parquet"
    result = score_users(ctx_rec, cfg, out, k=4, progress=False)  # as_of None: now (one clock read for the run)
    assert result.users == 4
    stamp = pq.read_schema(out).metadata[b"lite_rec.as_of"].decode()
    now = int(pd.Timestamp(stamp).timestamp())
    assert abs(now - time.time()) < 120 and ctx_rec.clock is clock
    events = [[{"item_id": i, "ts": t, "rating": r} for i, t, r in zip(h, ts, rs)]
              for h, ts, rs in zip(frame["history"], frame["ts"], frame["rating"])]
    want = ctx_rec.recommend(events, 4, request_times=[now] * 4)
    got = pd.read_parquet(out)
    assert [got[got.user_id == u]["item_id"].tolist() for u in frame["user_id"]] == [w.item_ids for w in want]
