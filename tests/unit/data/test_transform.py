"""The transform SQL on tiny hand-written raw tables: exact counts, orders, indices and splits."""

from __future__ import annotations

import hashlib
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from lite_rec.core.config import DataConfig, SourceConfig
from lite_rec.core.errors import DataError
from lite_rec.data.transform import OUTPUTS, apply_k_core, filter_interactions, run_sql, transform

Row = tuple[str, str, float, int]  # (user_id, item_id, rating, ts); row_no = position in the list


def data_config(**kw: object) -> DataConfig:
    return DataConfig(name="tiny", source=SourceConfig(format="ml-1m"), **kw)


def raw_con(rows: list[Row], items: list[tuple[str, str]] | None = None, threads: int = 1) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection holding raw_interactions/raw_items exactly as the readers create them."""
    con = duckdb.connect(config={"threads": threads})
    con.execute(
        "create table raw_interactions(user_id varchar, item_id varchar, rating double, ts bigint, row_no bigint)"
    )
    con.executemany(
        "insert into raw_interactions values (?, ?, ?, ?, ?)", [(u, i, r, t, n) for n, (u, i, r, t) in enumerate(rows)]
    )
    con.execute(
        "create table raw_items(item_id varchar, title varchar, genres varchar, brand varchar,"
        " categories varchar, description varchar)"
    )
    if items:
        con.executemany("insert into raw_items values (?, ?, 'g', null, null, null)", items)
    return con


def named(table: str) -> str:
    """A query over a keyed chain table (`table` is a test constant) with the raw ids joined back."""
    return (
        f"(select u.user_id, i.item_id, t.* from {table} as t"
        " join user_keys as u using (user_key) join item_keys as i using (item_key))"
    )


def full_grid(users: list[str], items: list[str], t0: int = 1000) -> list[Row]:
    """Every user rates every item, one second apart (a core that no k-core pass touches)."""
    return [(u, i, 4.0, t0 + n) for n, (u, i) in enumerate((u, i) for u in users for i in items)]


# A 3x3 core (c1..c3 x A..C) plus a chain that needs three k-core passes at k=3:
# pass 1 drops u3 (2 rows) and Y (1 row) -> X falls to 2; pass 2 drops X -> u1 and u2 fall to 2;
# pass 3 drops u1 and u2; pass 4 changes nothing.
CHAIN: list[Row] = full_grid(["c1", "c2", "c3"], ["A", "B", "C"]) + [
    ("u1", "X", 5.0, 1), ("u1", "A", 5.0, 2), ("u1", "B", 5.0, 3),
    ("u2", "X", 5.0, 1), ("u2", "A", 5.0, 2), ("u2", "C", 5.0, 3),
    ("u3", "X", 5.0, 1), ("u3", "Y", 5.0, 2),
]  # fmt: skip


def test_kcore_reaches_fixed_point_after_three_passes() -> None:
    con = raw_con(CHAIN)
    filter_interactions(con, data_config())
    assert apply_k_core(con, data_config(k_core=3)) == 3
    left = con.sql(f"select user_id, count(*) from {named('kcore_interactions')} group by 1 order by 1").fetchall()
    assert left == [("c1", 3), ("c2", 3), ("c3", 3)]
    assert con.sql(f"select count(distinct item_id) from {named('kcore_interactions')}").fetchall() == [(3,)]


def test_single_pass_would_not_be_enough() -> None:
    """Guards the test above: one pass leaves u1, u2 and X, which break the k-core."""
    con = raw_con(CHAIN)
    filter_interactions(con, data_config())
    run_sql(con, "kcore_edges")
    run_sql(con, "kcore_short", {"k_core": 3, "min_user_interactions": 3})
    assert con.sql("select count(*) from kcore_short").fetchall() == [(2,)]  # u3 and Y
    run_sql(con, "kcore_prune")
    assert con.sql("select count(*) from kcore_edges").fetchall() == [(15,)]
    assert con.sql(f"select count(*) from {named('kcore_edges')} where item_id = 'X'").fetchall() == [(2,)]


def test_kcore_below_three_still_drops_short_users(tmp_path: Path) -> None:
    """k_core=1 keeps every item, but users need min_user_interactions=3 for leave-one-out."""
    rows = full_grid(["a", "b"], ["p", "q", "r"]) + [("short", "p", 3.0, 1), ("short", "z", 3.0, 2)]
    result = transform(raw_con(rows), data_config(k_core=1), tmp_path, progress=False)
    assert (result.stats["users"], result.stats["items"], result.stats["interactions"]) == (2, 3, 6)
    assert result.stats["protocol"]["user_min_interactions"] == 3
    assert "raised to min_user_interactions=3" in result.stats["protocol"]["k_core_note"]


def test_dedup_keeps_first_by_ts_then_row_no() -> None:
    rows: list[Row] = [
        ("u", "i1", 1.0, 50),  # row 0: later duplicate of i1
        ("u", "i1", 2.0, 10),  # row 1: first i1 by ts -> kept
        ("u", "i2", 3.0, 20),  # row 2: i2, first of a ts tie by row_no -> kept
        ("u", "i2", 4.0, 20),  # row 3: same ts, later row -> dropped
        ("u", "i3", 5.0, 30),
    ]
    con = raw_con(rows)
    filter_interactions(con, data_config())
    kept = con.sql(f"select item_id, rating, row_no from {named('filtered_interactions')} order by item_id").fetchall()
    assert kept == [("i1", 2.0, 1), ("i2", 3.0, 2), ("i3", 5.0, 4)]


def test_min_rating_threshold_applies_before_dedup() -> None:
    rows: list[Row] = [("u", "a", 2.0, 1), ("u", "a", 4.0, 2), ("u", "b", 3.5, 3), ("u", "c", 5.0, 4)]
    con = raw_con(rows)
    filter_interactions(con, data_config(min_rating=4.0))
    kept = con.sql(f"select item_id, rating from {named('filtered_interactions')} order by item_id").fetchall()
    assert kept == [("a", 4.0), ("c", 5.0)]
    con = raw_con(rows)
    filter_interactions(con, data_config())  # min_rating None keeps every rating, then dedup
    assert con.sql("select count(*) from filtered_interactions").fetchall() == [(3,)]


def test_order_ties_indices_and_split(tmp_path: Path) -> None:
    # user "b" sorts after "a" (user_idx 1); p and q share ts=5 for user a, row order decides.
    rows: list[Row] = [
        ("b", "q", 4.0, 1),  # row 0: earliest event overall -> q gets item_idx 1
        ("a", "q", 4.0, 5),  # row 1
        ("a", "p", 4.0, 5),  # row 2: same ts as row 1, later row -> after q
        ("a", "r", 4.0, 3),  # row 3: earlier ts -> first in a's sequence
        ("b", "p", 4.0, 2),
        ("b", "r", 4.0, 9),
        ("a", "s", 4.0, 7),
        ("b", "s", 4.0, 8),
    ]
    items = [("p", "P"), ("q", "Q"), ("r", "R"), ("s", "S"), ("unused", "U")]
    result = transform(raw_con(rows, items), data_config(k_core=2), tmp_path, progress=False)
    item_map = {r["item_id"]: r["item_idx"] for r in pq.read_table(tmp_path / "item_map.parquet").to_pylist()}
    assert item_map == {"q": 1, "p": 2, "r": 3, "s": 4}  # first appearance: b@1 q, b@2 p, a@3 r, a@7 s
    seq = pq.read_table(tmp_path / "sequences.parquet").to_pylist()
    assert seq == [
        {"user_idx": 0, "user_id": "a", "train_seq": [3, 1], "valid_item_idx": 2, "test_item_idx": 4,
         "train_ts": [3, 5], "valid_ts": 5, "test_ts": 7,  # the timestamps follow the items, ties included
         "train_rating": [4.0, 4.0], "valid_rating": 4.0, "test_rating": 4.0},
        {"user_idx": 1, "user_id": "b", "train_seq": [1, 2], "valid_item_idx": 4, "test_item_idx": 3,
         "train_ts": [1, 2], "valid_ts": 8, "test_ts": 9,
         "train_rating": [4.0, 4.0], "valid_rating": 4.0, "test_rating": 4.0},
    ]
    inter = pq.read_table(tmp_path / "interactions.parquet")
    assert inter.column_names == ["user_id", "item_id", "rating", "ts", "row_no", "user_idx", "item_idx", "pos"]
    assert inter.column("row_no").to_pylist() == [3, 1, 2, 6, 0, 4, 7, 5]
    assert inter.column("pos").to_pylist() == [0, 1, 2, 3, 0, 1, 2, 3]
    items_out = pq.read_table(tmp_path / "items.parquet").select(["item_idx", "item_id", "title"]).to_pylist()
    assert items_out == [
        {"item_idx": 1, "item_id": "q", "title": "Q"},
        {"item_idx": 2, "item_id": "p", "title": "P"},
        {"item_idx": 3, "item_id": "r", "title": "R"},
        {"item_idx": 4, "item_id": "s", "title": "S"},
    ]
    assert str(pq.read_schema(tmp_path / "sequences.parquet").field("train_seq").type) == "list<element: int32>"
    assert result.stats["users"] == 2 and result.stats["items"] == 4 and result.stats["interactions"] == 8
    assert result.stats["sparsity"] == 0.0
    assert result.stats["mean_seq_len"] == 4.0 and result.stats["median_seq_len"] == 4.0


def test_item_idx_is_contiguous_from_one(tmp_path: Path) -> None:
    rows = full_grid(["u1", "u2", "u3"], ["i7", "i3", "i9", "i1"])
    transform(raw_con(rows), data_config(k_core=3), tmp_path, progress=False)
    idx = sorted(pq.read_table(tmp_path / "item_map.parquet").column("item_idx").to_pylist())
    assert idx == [1, 2, 3, 4]
    users = pq.read_table(tmp_path / "user_map.parquet").to_pylist()
    assert users == [{"user_id": "u1", "user_idx": 0}, {"user_id": "u2", "user_idx": 1}, {"user_id": "u3", "user_idx": 2}]


def test_stats_of_chain(tmp_path: Path) -> None:
    result = transform(raw_con(CHAIN), data_config(k_core=3), tmp_path, progress=False)
    stats = result.stats
    assert (stats["users"], stats["items"], stats["interactions"]) == (3, 3, 9)
    assert stats["k_core_iterations"] == 3
    assert stats["raw_interactions"] == 17 and stats["removed_by_k_core"] == 8
    assert stats["protocol"]["k_core"] == 3 and stats["protocol"]["min_rating"] is None


def test_kcore_that_empties_the_data_raises(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"k_core=5.*left 0 interactions out of 17"):
        transform(raw_con(CHAIN), data_config(k_core=5), tmp_path, progress=False)


def test_threshold_that_empties_the_data_raises(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"min_rating=9.0.*out of 17 raw rows"):
        transform(raw_con(CHAIN), data_config(min_rating=9.0), tmp_path, progress=False)


def _digests(directory: Path) -> dict[str, str]:
    return {name: hashlib.sha256((directory / name).read_bytes()).hexdigest() for name in OUTPUTS}


def test_outputs_are_byte_identical_across_runs_and_threads(tmp_path: Path) -> None:
    rows = CHAIN + full_grid([f"v{n}" for n in range(40)], ["A", "B", "C", "D", "E"], t0=5000)
    transform(raw_con(rows, threads=1), data_config(k_core=3), tmp_path / "one", progress=False)
    transform(raw_con(rows, threads=2), data_config(k_core=3), tmp_path / "two", progress=False)
    transform(raw_con(rows, threads=2), data_config(k_core=3), tmp_path / "again", progress=False)
    assert _digests(tmp_path / "one") == _digests(tmp_path / "two") == _digests(tmp_path / "again")
