"""Promotion scoring: same numbers as the evaluation code path, on raw ids, misses for unknowns."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from lite_rec.core.config import build_config
from lite_rec.core.errors import ConfigError, DataError
from lite_rec.eval.evaluate import build_eval_set, evaluate_model
from lite_rec.infer.recommender import Recommender
from lite_rec.registry.promotion import HeldOut, load_held_out, parse_metric, score_recommender
from tests.unit.infer.test_recommender import IDS, SEQUENCES, _make_recommender


@pytest.fixture(scope="module")
def rec(tmp_path_factory: pytest.TempPathFactory) -> Recommender:
    return _make_recommender(tmp_path_factory.mktemp("promo"))


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory) -> HeldOut:
    cfg = build_config("ml-100k", {"data_dir": str(tmp_path_factory.mktemp("data"))})
    cfg.processed_dir.mkdir(parents=True)
    items = pd.DataFrame({"item_idx": range(1, len(IDS) + 1), "item_id": IDS, "title": IDS})
    items.sample(frac=1.0, random_state=0).to_parquet(cfg.processed_dir / "items.parquet", index=False)  # order must not matter
    SEQUENCES.to_parquet(cfg.processed_dir / "sequences.parquet", index=False)
    return load_held_out(cfg, "test")


@pytest.fixture(scope="module")
def held_out_valid(held_out: HeldOut, tmp_path_factory: pytest.TempPathFactory) -> HeldOut:
    cfg = build_config("ml-100k", {"data_dir": str(tmp_path_factory.mktemp("data"))})
    cfg.processed_dir.mkdir(parents=True)
    pd.DataFrame({"item_idx": range(1, len(IDS) + 1), "item_id": IDS, "title": IDS}).to_parquet(
        cfg.processed_dir / "items.parquet", index=False)
    SEQUENCES.to_parquet(cfg.processed_dir / "sequences.parquet", index=False)
    return load_held_out(cfg)  # the default: what promotion scores


def test_held_out_is_the_test_split_in_raw_ids(held_out: HeldOut) -> None:
    assert held_out.histories[1] == ["m03", "m01", "m02", "m04"]  # train_seq + [valid]
    assert held_out.targets == ["m09", "m05", "m06", "m07"]


def test_promotion_holds_out_the_validation_split_not_the_reported_test(held_out_valid: HeldOut) -> None:
    assert held_out_valid.histories[1] == ["m03", "m01", "m02"]  # train_seq only
    assert held_out_valid.targets == [IDS[i - 1] for i in SEQUENCES["valid_item_idx"]]
    assert "valid split" in held_out_valid.source


@pytest.mark.parametrize("metric", ["valid_ndcg_10", "valid_recall_5", "ndcg_3", "valid_recall_1"])
def test_promotion_score_equals_the_evaluation_metric(rec: Recommender, held_out_valid: HeldOut, metric: str) -> None:
    expected = evaluate_model(rec.model, build_eval_set(SEQUENCES, "valid"), ks=(parse_metric(metric)[1],), progress=False)
    key = "valid_" + metric.removeprefix("valid_")
    assert score_recommender(rec, held_out_valid, metric) == pytest.approx(expected[key], abs=1e-9)


def test_unknown_target_is_a_miss_and_unknown_history_items_are_dropped(rec: Recommender, held_out: HeldOut) -> None:
    base = score_recommender(rec, held_out, "recall_12")  # k = catalog: every known target hits
    assert base == pytest.approx(1.0)
    odd = HeldOut([h + ["not-in-this-model"] for h in held_out.histories], ["gone", *held_out.targets[1:]], "test")
    assert score_recommender(rec, odd, "recall_12") == pytest.approx(3 / 4)


@pytest.mark.parametrize("bad", ["valid_mrr_10", "ndcg_0", "ndcg10"])
def test_unsupported_promote_metric_is_a_config_error(bad: str) -> None:
    with pytest.raises(ConfigError, match="tracking.promote_metric"):
        parse_metric(bad)


def test_held_out_carries_events_and_request_times_where_the_data_has_times(tmp_path: Path) -> None:
    """A model reading the input context is scored on what the service would get: each history item
    as an event with its time and rating, and the target's time as the request time."""
    cfg = build_config("ml-100k", {"data_dir": str(tmp_path)})
    cfg.processed_dir.mkdir(parents=True)
    pd.DataFrame({"item_idx": [1, 2, 3, 4], "item_id": ["a", "b", "c", "d"], "title": list("abcd")}).to_parquet(
        cfg.processed_dir / "items.parquet", index=False)
    pd.DataFrame({"user_idx": [0], "user_id": ["u"], "train_seq": [[1, 2]], "valid_item_idx": [3], "test_item_idx": [4],
                  "train_ts": [[100, 200]], "valid_ts": [300], "test_ts": [400],
                  "train_rating": [[4.0, 5.0]], "valid_rating": [3.0]}).to_parquet(cfg.processed_dir / "sequences.parquet")
    valid, test = load_held_out(cfg), load_held_out(cfg, "test")
    assert valid.histories == [[{"item_id": "a", "ts": 100, "rating": 4.0}, {"item_id": "b", "ts": 200, "rating": 5.0}]]
    assert (valid.targets, valid.request_times) == (["c"], [300])
    assert test.histories[0][-1] == {"item_id": "c", "ts": 300, "rating": 3.0} and test.request_times == [400]


def test_promoting_on_the_reported_test_split_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"'test_ndcg_10': promotion selects on the validation split \(e.g. valid_ndcg_10\)"):
        parse_metric("test_ndcg_10")
    assert build_config("ml-100k").tracking.promote_metric == "valid_ndcg_10"


def test_missing_processed_data_is_named(tmp_path: Path) -> None:
    cfg = build_config("ml-100k", {"data_dir": str(tmp_path)})
    with pytest.raises(DataError, match=r"items\.parquet: missing; run the data stage"):
        load_held_out(cfg)
