"""Great Expectations suites: they pass on good data and fail with readable, exact summaries."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from lite_rec.core.config import DataConfig, SourceConfig
from lite_rec.core.errors import ValidationFailed
from lite_rec.data.transform import transform
from lite_rec.data.validation import EARLIEST_TS, summarize_raw, validate_processed, validate_raw

T0 = 978_300_760  # 2000-12-31, a real ML-1m timestamp
NOW = 1_800_000_000.0  # fixed "now" for the timestamp bound: 2027-01-15


def data_config(**kw: object) -> DataConfig:
    return DataConfig(name="tiny", source=SourceConfig(format="ml-1m"), **kw)


def raw_con(rows: list[tuple], items: list[tuple[str | None, str | None]]) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("create table raw_interactions(user_id varchar, item_id varchar, rating double, ts bigint, row_no bigint)")
    con.executemany("insert into raw_interactions values (?, ?, ?, ?, ?)", [(*r, n) for n, r in enumerate(rows)])
    con.execute(
        "create table raw_items(item_id varchar, title varchar, genres varchar, brand varchar,"
        " categories varchar, description varchar)"
    )
    con.executemany("insert into raw_items values (?, ?, null, null, null, null)", items)
    return con


GOOD_ROWS = [(u, i, 4.0, T0 + n) for n, (u, i) in enumerate((u, i) for u in "abc" for i in "pqr")]
GOOD_ITEMS = [("p", "P"), ("q", "Q"), ("r", "R")]


def test_raw_suites_pass_and_save_results(tmp_path: Path) -> None:
    summary = summarize_raw(raw_con(GOOD_ROWS, GOOD_ITEMS), data_config(), now=NOW)
    saved = validate_raw(summary, data_config(), tmp_path)
    assert sorted(saved) == ["raw_interactions", "raw_items"]
    result = json.loads(saved["raw_interactions"].read_text())
    assert result["success"] is True and result["statistics"]["evaluated_expectations"] == 8
    assert summary.interactions["row_count"] == 9 and summary.interactions["min_ts"] == T0


def test_raw_interactions_failure_names_fields_rows_and_values(tmp_path: Path) -> None:
    rows = list(GOOD_ROWS)
    rows[2] = ("a", "r", 55.0, T0)  # rating outside [0, 10]
    rows[3] = (None, "p", 4.0, T0)  # missing user
    rows[5] = ("b", "r", 4.0, 100)  # 1970: before 1990
    rows[7] = ("c", "q", 12.0, T0)
    with pytest.raises(ValidationFailed) as info:
        validate_raw(summarize_raw(raw_con(rows, GOOD_ITEMS), data_config(), now=NOW), data_config(), tmp_path)
    message = str(info.value)
    assert f"failed 3 of 8 expectations (results: {tmp_path / 'raw_interactions.json'})" in message
    assert "observed missing_user_id=1; 1 raw rows fail on field 'user_id'" in message and "row_no=3" in message
    assert (
        "expect_column_values_to_be_between(column='max_rating', min_value=0.0, max_value=10.0): observed "
        "max_rating=55.0; 2 raw rows fail on field 'rating' (row_no = 0-based data line), "
        "e.g. row_no=2 (rating=55.0), row_no=7 (rating=12.0)"
    ) in message
    assert "observed min_ts=100; 1 raw rows fail on field 'ts'" in message and "row_no=5 (ts=100)" in message
    assert json.loads((tmp_path / "raw_interactions.json").read_text())["success"] is False
    assert json.loads((tmp_path / "raw_items.json").read_text())["success"] is True  # both suites ran


def test_rating_bounds_come_from_the_config(tmp_path: Path) -> None:
    rows = [*GOOD_ROWS[:-1], ("c", "r", 55.0, T0)]
    cfg = data_config(rating_bounds=(0.0, 100.0))
    assert validate_raw(summarize_raw(raw_con(rows, GOOD_ITEMS), cfg, now=NOW), cfg, tmp_path)


def test_timestamps_after_tomorrow_fail(tmp_path: Path) -> None:
    rows = [*GOOD_ROWS[:-1], ("c", "r", 4.0, int(NOW) + 2 * 86_400)]
    with pytest.raises(ValidationFailed, match=r"observed max_ts=1800172800; 1 raw rows fail on field 'ts'"):
        validate_raw(summarize_raw(raw_con(rows, GOOD_ITEMS), data_config(), now=NOW), data_config(), tmp_path)
    assert EARLIEST_TS == 631_152_000  # 1990-01-01T00:00:00Z


def test_raw_items_duplicates_and_empty_titles(tmp_path: Path) -> None:
    items = [("p", "P"), ("p", "P again"), ("q", "   "), ("r", None)]
    with pytest.raises(ValidationFailed) as info:
        validate_raw(summarize_raw(raw_con(GOOD_ROWS, items), data_config(), now=NOW), data_config(), tmp_path)
    message = str(info.value)
    assert "validation suite 'raw_items' failed 3 of 4 expectations" in message
    assert "expect_column_values_to_be_unique(column='item_id'): 2 of 4 rows failed" in message
    assert (
        "expect_column_values_to_not_be_null(column='title'): 1 of 4 rows failed; e.g. {'title': None, 'item_id': 'r'}"
    ) in message
    assert "expect_column_value_lengths_to_be_between(column='title', min_value=1): 1 of 4 rows failed" in message
    assert "'item_id': 'q'" in message
    assert "raw_interactions" not in message  # that suite passed


def test_title_less_items_pass_up_to_the_configured_share(tmp_path: Path) -> None:
    """Amazon metadata has records without a title: `min_title_fraction` says how many may lack one."""
    items = [("p", "P"), ("q", ""), ("r", None), ("s", "S"), ("t", "T"), ("u", "U"), ("v", "V"), ("w", "W")]
    lenient = data_config(min_title_fraction=0.75)  # 6 of 8 have a title (1 null, 1 empty)
    assert validate_raw(summarize_raw(raw_con(GOOD_ROWS, items), lenient, now=NOW), lenient, tmp_path)
    assert json.loads((tmp_path / "raw_items.json").read_text())["success"] is True
    strict = data_config(min_title_fraction=0.9)
    with pytest.raises(ValidationFailed) as info:
        validate_raw(summarize_raw(raw_con(GOOD_ROWS, items), strict, now=NOW), strict, tmp_path)
    message = str(info.value)
    assert "validation suite 'raw_items' failed 2 of 4 expectations" in message  # 7 of 8 non-null, 6 of 7 non-empty
    assert "expect_column_values_to_not_be_null(column='title', mostly=0.9): 1 of 8 rows failed" in message, message
    assert "expect_column_value_lengths_to_be_between(column='title', mostly=0.9, min_value=1): 1 of 8 rows failed" in message
    assert "'item_id': 'q'" in message


@pytest.fixture
def processed(tmp_path: Path) -> tuple[duckdb.DuckDBPyConnection, Path]:
    """Good transform outputs of a 4x4 grid at k_core=3 (4 users, 4 items, 16 interactions)."""
    rows = [(u, i, 4.0, T0 + n) for n, (u, i) in enumerate((u, i) for u in "abcd" for i in "pqrs")]
    con = raw_con(rows, [*GOOD_ITEMS, ("s", "S")])
    out = tmp_path / "out"
    transform(con, data_config(k_core=3), out, progress=False)
    return con, out


def test_processed_suites_pass_on_transform_output(processed: tuple[duckdb.DuckDBPyConnection, Path]) -> None:
    con, out = processed
    saved = validate_processed(con, out, data_config(k_core=3), out / "validation")
    assert {name: json.loads(p.read_text())["success"] for name, p in saved.items()} == {
        "processed_users": True,
        "processed_items": True,
    }


def test_processed_suite_reports_broken_split(processed: tuple[duckdb.DuckDBPyConnection, Path]) -> None:
    con, out = processed
    # user 1 loses a training item (and its timestamp, not its rating), user 2 its test item, user 0's validation
    # timestamp comes before its training items'
    con.execute(
        "copy (select user_idx, user_id,"
        " case when user_idx = 1 then train_seq[1:1] else train_seq end as train_seq, valid_item_idx,"
        " case when user_idx = 2 then null else test_item_idx end as test_item_idx,"
        " case when user_idx = 1 then train_ts[1:1] else train_ts end as train_ts,"
        " case when user_idx = 0 then 0 else valid_ts end as valid_ts, test_ts, train_rating, valid_rating, test_rating"
        " from read_parquet($src)) to $dst (format parquet)",
        {"src": str(out / "sequences.parquet"), "dst": str(out / "broken.parquet")},
    )
    (out / "broken.parquet").replace(out / "sequences.parquet")
    with pytest.raises(ValidationFailed) as info:
        validate_processed(con, out, data_config(k_core=3), out / "validation")
    message = str(info.value)
    assert "validation suite 'processed_users' failed 4 of 13 expectations" in message
    assert (
        "expect_column_pair_values_to_be_equal(column_A='train_len', column_B='expected_train_len'): "
        "1 of 4 rows failed; e.g. {'train_len': 1, 'user_idx': 1, 'expected_train_len': 2}"
    ) in message
    assert "expect_column_values_to_not_be_null(column='test_item_idx'): 1 of 4 rows failed" in message
    assert "column_A='train_rating_len', column_B='train_len'): 1 of 4 rows failed" in message  # ratings kept
    assert "expect_column_values_to_be_in_set(column='ts_ordered', value_set=[True]): 1 of 4 rows failed" in message
    assert "processed_items" not in message


def test_processed_suite_reports_kcore_and_item_gap(processed: tuple[duckdb.DuckDBPyConnection, Path]) -> None:
    con, out = processed
    con.execute(
        "copy (select * from read_parquet($src) where item_idx <> 2) to $dst (format parquet)",
        {"src": str(out / "items.parquet"), "dst": str(out / "broken.parquet")},
    )
    (out / "broken.parquet").replace(out / "items.parquet")
    with pytest.raises(ValidationFailed) as info:
        validate_processed(con, out, data_config(k_core=5), out / "validation")  # 4 < 5 everywhere
    message = str(info.value)
    assert "expect_column_values_to_be_between(column='n_interactions', min_value=5.0): 4 of 4 rows failed" in message
    assert "validation suite 'processed_items' failed 2 of 5 expectations" in message
    assert (
        "expect_column_values_to_not_be_null(column='item_id'): 1 of 4 rows failed; "
        "e.g. {'item_id': None, 'item_idx': 2}"
    ) in message
    assert json.loads((out / "validation" / "processed_items.json").read_text())["success"] is False
    assert pq.read_table(out / "item_map.parquet").num_rows == 4
