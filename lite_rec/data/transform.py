"""Raw interactions -> filtered, k-core, time-ordered, indexed, split tables (DuckDB SQL in sql/).

Why SQL in files: every step of the data protocol (docs/design.md) is one reviewable statement in
``sql/<table>.sql`` that creates the table it is named after, with named parameters bound from
:class:`~lite_rec.core.config.DataConfig` -- user values are never formatted into SQL text. This
module only sequences those statements, runs the k-core pass to a fixed point, writes the
Parquet outputs and gathers the stats.

The chain (each name is a table and a file)::

    raw_interactions -> user_keys, item_keys (integer keys in raw-id order)
      -> filtered_interactions (rating threshold, first of each (user, item))
      -> kcore_edges (kcore_short + kcore_prune repeated until nothing is short)
      -> kcore_interactions
      -> user_map, item_map -> interactions (+ pos) -> sequences (leave-one-out), items, stats

Determinism: every output is written with an ORDER BY over a total key, so the same inputs and
config give byte-identical Parquet files whatever the number of DuckDB threads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
from tqdm.auto import tqdm

from lite_rec.core.config import DataConfig, resource_dir
from lite_rec.core.errors import DataError

SQL_DIR = resource_dir("sql")
_PARAM = re.compile(r"\$([a-z_][a-z0-9_]*)")

# Output file -> (table, columns, ORDER BY key unique per row, so the byte layout is fixed).
OUTPUTS: dict[str, tuple[str, str, str]] = {
    "interactions.parquet": (
        "interactions", "user_id, item_id, rating, ts, row_no, user_idx, item_idx, pos", "user_idx, pos"
    ),
    "items.parquet": ("items", "item_idx, item_id, title, genres, brand, categories, description", "item_idx"),
    "item_map.parquet": ("item_map", "item_id, item_idx", "item_idx"),
    "user_map.parquet": ("user_map", "user_id, user_idx", "user_idx"),
    "sequences.parquet": (
        "sequences",
        "user_idx, user_id, train_seq, valid_item_idx, test_item_idx, train_ts, valid_ts, test_ts, "
        "train_rating, valid_rating, test_rating",
        "user_idx",
    ),
}
# Tables of the chain, so row counts are only ever taken of names this module owns.
_TABLES = {"raw_interactions", "filtered_interactions", "kcore_edges", "kcore_short", "kcore_interactions"}

DEDUP_RULE = "one row per (user_id, item_id): the first by (ts, row_no), after the rating threshold"
ORDER_RULE = "per user by ts, ties by row_no (0-based line in the raw file)"
SPLIT_RULE = "leave-one-out: last = test, second-to-last = validation, rest = train"
ITEM_IDX_RULE = "1..N by first appearance in the time-ordered stream (ties by user_id, row_no); 0 = padding"
USER_IDX_RULE = "0..U-1 in order of raw user_id"


def read_sql(name: str) -> str:
    """The text of ``sql/<name>.sql`` (one statement)."""
    path = SQL_DIR / f"{name}.sql"
    if not path.exists():
        raise FileNotFoundError(f"{path}: SQL file missing from the checkout")
    return path.read_text(encoding="utf-8")


def run_sql(con: duckdb.DuckDBPyConnection, name: str, params: dict[str, Any] | None = None) -> None:
    """Execute ``sql/<name>.sql`` binding exactly the named parameters the statement uses."""
    text = read_sql(name)
    code = re.sub(r"--[^\n]*", "", text)  # parameters named in comments are not bound
    wanted = sorted(set(_PARAM.findall(code)))
    params = params or {}
    missing = [p for p in wanted if p not in params]
    if missing:
        raise KeyError(f"sql/{name}.sql needs parameter(s) {missing}; got {sorted(params)}")
    con.execute(text, {p: params[p] for p in wanted})


def count_rows(con: duckdb.DuckDBPyConnection, table: str) -> int:
    if table not in _TABLES:
        raise ValueError(f"count_rows: {table!r} is not a table of the transform chain")
    return int(con.sql(f"select count(*) from {table}").fetchall()[0][0])


def user_threshold(data: DataConfig) -> int:
    """Interactions a user needs: the k-core, raised to what leave-one-out needs (>= 3)."""
    return max(data.k_core, data.min_user_interactions)


@dataclass
class TransformResult:
    """Where the outputs went and what the transform measured on the way (for stats.json)."""

    outputs: dict[str, Path]
    stats: dict[str, Any]
    kcore_iterations: int
    counts: dict[str, int] = field(default_factory=dict)


def filter_interactions(con: duckdb.DuckDBPyConnection, data: DataConfig) -> None:
    """Integer keys, rating threshold and de-duplication (sql/{user,item}_keys.sql,
    sql/filtered_interactions.sql)."""
    run_sql(con, "user_keys")
    run_sql(con, "item_keys")
    run_sql(con, "filtered_interactions", {"min_rating": data.min_rating})


def apply_k_core(con: duckdb.DuckDBPyConnection, data: DataConfig) -> int:
    """Repeat the k-core pass until no row is removed; return the passes that removed rows.

    Why a loop: removing a user can push an item below k, whose removal pushes another user
    below k, and so on; one pass is not enough. Each pass removes every user and item under its
    threshold at once (sql/kcore_short.sql, sql/kcore_prune.sql); the loop stops when nothing
    is short, i.e. when a pass would leave the row count unchanged. The fixed point is the
    unique largest sub-table where all users have >= ``user_threshold(data)`` and all items
    >= ``k_core`` interactions, so it does not depend on the order of removals (only the number
    of passes does). The loop runs on the narrow (user_key, item_key) edge table;
    ``kcore_interactions`` gets the full rows at the end.
    """
    run_sql(con, "kcore_edges")
    params = {"k_core": data.k_core, "min_user_interactions": data.min_user_interactions}
    iterations = 0
    while True:
        run_sql(con, "kcore_short", params)
        if count_rows(con, "kcore_short") == 0 or count_rows(con, "kcore_edges") == 0:
            break
        run_sql(con, "kcore_prune")
        iterations += 1
    run_sql(con, "kcore_interactions")
    con.execute("drop table kcore_edges")
    con.execute("drop table kcore_short")
    return iterations


def write_outputs(con: duckdb.DuckDBPyConnection, out_dir: Path) -> dict[str, Path]:
    """Copy the output tables to Parquet in `out_dir`, each in the order of its unique key."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for filename, (table, columns, order) in OUTPUTS.items():
        path = out_dir / filename
        # `table`, `columns` and `order` are module constants, never user input; the path is bound.
        con.execute(
            f"copy (select {columns} from {table} order by {order}) to $path (format parquet, compression zstd)",
            {"path": str(path)},
        )
        written[filename] = path
    return written


def collect_stats(
    con: duckdb.DuckDBPyConnection, data: DataConfig, counts: dict[str, int], iterations: int
) -> dict[str, Any]:
    """Dataset size and protocol, the content of stats.json (no timestamps: re-runs are identical)."""
    run_sql(con, "stats")
    cols = [d[0] for d in con.sql("select * from stats").description]
    row = dict(zip(cols, con.sql("select * from stats").fetchall()[0], strict=True))
    users, items, inter = int(row["users"]), int(row["items"]), int(row["interactions"])
    threshold = user_threshold(data)
    note = (
        f"users need >= {threshold} interactions: k_core={data.k_core} raised to "
        f"min_user_interactions={data.min_user_interactions} so that leave-one-out has train/valid/test"
        if threshold > data.k_core
        else f"users and items need >= k_core={data.k_core} interactions"
    )
    return {
        "dataset": data.name,
        "users": users,
        "items": items,
        "interactions": inter,
        "sparsity": 1.0 - inter / (users * items),
        "mean_seq_len": float(row["mean_seq_len"]),
        "median_seq_len": float(row["median_seq_len"]),
        "min_seq_len": int(row["min_seq_len"]),
        "max_seq_len": int(row["max_seq_len"]),
        "k_core_iterations": iterations,
        "raw_interactions": counts["raw_interactions"],
        "after_rating_threshold_and_dedup": counts["filtered_interactions"],
        "removed_by_k_core": counts["filtered_interactions"] - inter,
        "protocol": {
            "k_core": data.k_core,
            "user_min_interactions": threshold,
            "item_min_interactions": data.k_core,
            "min_user_interactions": data.min_user_interactions,
            "k_core_note": note,
            "min_rating": data.min_rating,
            "dedup": DEDUP_RULE,
            "order": ORDER_RULE,
            "split": SPLIT_RULE,
            "item_idx": ITEM_IDX_RULE,
            "user_idx": USER_IDX_RULE,
        },
    }


def transform(con: duckdb.DuckDBPyConnection, data: DataConfig, out_dir: Path, *, progress: bool = True) -> TransformResult:
    """Run the whole chain on ``raw_interactions``/``raw_items`` in `con`; write Parquet to `out_dir`.

    Raises :class:`DataError` when the rating threshold or the k-core leaves no interactions,
    naming the k-core, the thresholds and how many rows were left. Intermediate tables are
    dropped as soon as the next one exists, so a 20M-row input holds at most two copies.
    """
    steps = ["filter", "k-core", "index", "split", "write"]
    with tqdm(total=len(steps), desc=f"transform {data.name}", unit="step", disable=not progress, leave=False) as bar:
        return _run_chain(con, data, out_dir, bar)


def _run_chain(con: duckdb.DuckDBPyConnection, data: DataConfig, out_dir: Path, bar: tqdm) -> TransformResult:
    counts = {"raw_interactions": count_rows(con, "raw_interactions")}

    bar.set_postfix_str("rating threshold + dedup")
    filter_interactions(con, data)
    counts["filtered_interactions"] = count_rows(con, "filtered_interactions")
    if counts["filtered_interactions"] == 0:
        raise DataError(
            f"dataset {data.name}: no interactions left after the rating threshold "
            f"(min_rating={data.min_rating}) out of {counts['raw_interactions']} raw rows"
        )
    con.execute("drop table raw_interactions")  # only filtered rows are needed from here on
    bar.update()

    bar.set_postfix_str("k-core to a fixed point")
    iterations = apply_k_core(con, data)
    con.execute("drop table filtered_interactions")
    kept = count_rows(con, "kcore_interactions")
    if kept == 0:
        raise DataError(
            f"dataset {data.name}: the k-core (k_core={data.k_core}: users need >= {user_threshold(data)}, "
            f"items >= {data.k_core} interactions) left 0 interactions out of "
            f"{counts['filtered_interactions']} after {iterations} pass(es); lower dataset.k_core"
        )
    bar.update()

    bar.set_postfix_str("dense indices")
    for name in ("user_map", "item_map", "interactions"):
        run_sql(con, name)
    for table in ("kcore_interactions", "user_keys", "item_keys"):
        con.execute(f"drop table {table}")  # constants of this module
    bar.update()

    bar.set_postfix_str("leave-one-out split")
    run_sql(con, "sequences")
    run_sql(con, "items")
    bar.update()

    bar.set_postfix_str("parquet")
    outputs = write_outputs(con, out_dir)
    stats = collect_stats(con, data, counts, iterations)
    bar.update()
    return TransformResult(outputs=outputs, stats=stats, kcore_iterations=iterations, counts=counts)
