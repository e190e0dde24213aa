"""Great Expectations suites for the data stage: raw interactions, raw items, processed outputs.

Why GX and not asserts: each suite is a named, declarative list of expectations whose results
are saved as JSON beside the data (``processed/<dataset>/validation/<suite>.json``), so a
reviewer can see what was checked and what was observed. A failed suite raises
:class:`~lite_rec.core.errors.ValidationFailed` with a readable summary: which expectation, on
which column, how many rows failed, up to five examples, and the path of the JSON.

How large tables are validated (20M raw rows must not be copied into pandas):
- ``raw_interactions``: DuckDB computes whole-table aggregates in one scan (row count, missing
  keys, rating and timestamp min/max, and per kind of bad row its count and first five
  row_no; sql/raw_interactions_summary.sql) into a one-row frame that GX validates against the
  bounds. Nothing is sampled: every row is counted.
- ``raw_items``: the (item_id, title) frame itself, row by row (items number thousands to a
  few million, two columns).
- ``processed_users`` / ``processed_items``: one row per user / per item, built by DuckDB from
  the Parquet files just written (sql/processed_*.sql), validated row by row. Together they
  check: every user has >= max(k_core, min_user_interactions) >= 3 interactions, every item
  >= k_core (the k-core holds), user_idx is 0..U-1 and item_idx 1..N with no gap (unique,
  within range, and exactly U / N rows), and the split sizes: one validation and one test item
  per user and train length = n - 2.

GX takes ~4-7 s to import, so it is imported inside the functions that need it, and
:func:`preload_gx` lets the ingest start that import in a background thread while DuckDB works
(DuckDB releases the GIL). The raw summary is computed by :func:`summarize_raw` (DuckDB only)
and judged by :func:`validate_raw` (GX) later, so the two can be split around the transform.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa

from lite_rec.core.config import DataConfig
from lite_rec.core.errors import ValidationFailed
from lite_rec.core.io import write_json
from lite_rec.data.transform import run_sql, user_threshold

EARLIEST_TS = 631_152_000  # 1990-01-01T00:00:00Z: no rating dump predates it
MAX_EXAMPLES = 5

Spec = tuple[str, dict[str, Any]]  # (GX expectation class name, its keyword arguments)

# raw_interactions_summary column -> (raw field, summary column counting its bad rows, examples).
_RAW_BLAME: dict[str, tuple[str, str, str]] = {
    "missing_user_id": ("user_id", "missing_user_id", "user_id_examples"),
    "missing_item_id": ("item_id", "missing_item_id", "item_id_examples"),
    "missing_ts": ("ts", "missing_ts", "missing_ts_examples"),
    "min_rating": ("rating", "bad_rating_rows", "rating_examples"),
    "max_rating": ("rating", "bad_rating_rows", "rating_examples"),
    "min_ts": ("ts", "bad_ts_rows", "ts_examples"),
    "max_ts": ("ts", "bad_ts_rows", "ts_examples"),
}
_SUMMARY_SCALARS = [
    "row_count", "missing_user_id", "missing_item_id", "missing_ts", "min_rating", "max_rating", "min_ts", "max_ts"
]


def preload_gx() -> threading.Thread:
    """Start importing Great Expectations in a daemon thread; the first suite joins it implicitly."""
    thread = threading.Thread(target=_import_gx, name="gx-import", daemon=True)
    thread.start()
    return thread


def _import_gx() -> Any:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    return gx


def ts_bounds(now: float | None = None) -> tuple[int, int]:
    """Plausible raw timestamps: from 1990-01-01 to one day past now (clock skew)."""
    return EARLIEST_TS, int((time.time() if now is None else now) + 86_400)


def raw_interactions_expectations(data: DataConfig, ts_range: tuple[int, int]) -> list[Spec]:
    """Expectations on the one-row aggregate frame of raw_interactions."""
    low, high = data.rating_bounds
    earliest, latest = ts_range
    between = "ExpectColumnValuesToBeBetween"
    return [
        (between, {"column": "row_count", "min_value": 1}),
        (between, {"column": "missing_user_id", "min_value": 0, "max_value": 0}),
        (between, {"column": "missing_item_id", "min_value": 0, "max_value": 0}),
        (between, {"column": "missing_ts", "min_value": 0, "max_value": 0}),
        (between, {"column": "min_rating", "min_value": low, "max_value": high}),
        (between, {"column": "max_rating", "min_value": low, "max_value": high}),
        (between, {"column": "min_ts", "min_value": earliest, "max_value": latest}),
        (between, {"column": "max_ts", "min_value": earliest, "max_value": latest}),
    ]


def raw_items_expectations(min_title_fraction: float = 1.0) -> list[Spec]:
    """Item ids unique and present; titles non-empty in at least `min_title_fraction` of the rows
    (GX ``mostly``; 1.0 = every row, as MovieLens always has one)."""
    mostly = {} if min_title_fraction >= 1.0 else {"mostly": min_title_fraction}
    return [
        ("ExpectColumnValuesToNotBeNull", {"column": "item_id"}),
        ("ExpectColumnValuesToBeUnique", {"column": "item_id"}),
        ("ExpectColumnValuesToNotBeNull", {"column": "title", **mostly}),
        ("ExpectColumnValueLengthsToBeBetween", {"column": "title", "min_value": 1, **mostly}),
    ]


def processed_users_expectations(data: DataConfig, n_users: int, n_items: int) -> list[Spec]:
    return [
        ("ExpectTableRowCountToEqual", {"value": n_users}),
        ("ExpectColumnValuesToBeUnique", {"column": "user_idx"}),
        ("ExpectColumnValuesToBeBetween", {"column": "user_idx", "min_value": 0, "max_value": n_users - 1}),
        ("ExpectColumnValuesToBeBetween", {"column": "n_interactions", "min_value": user_threshold(data)}),
        ("ExpectColumnValuesToNotBeNull", {"column": "train_len"}),
        ("ExpectColumnPairValuesToBeEqual", {"column_A": "train_len", "column_B": "expected_train_len"}),
        ("ExpectColumnPairValuesToBeEqual", {"column_A": "train_ts_len", "column_B": "train_len"}),
        ("ExpectColumnPairValuesToBeEqual", {"column_A": "train_rating_len", "column_B": "train_len"}),
        ("ExpectColumnValuesToBeInSet", {"column": "ts_ordered", "value_set": [True]}),
        ("ExpectColumnValuesToNotBeNull", {"column": "valid_item_idx"}),
        ("ExpectColumnValuesToBeBetween", {"column": "valid_item_idx", "min_value": 1, "max_value": n_items}),
        ("ExpectColumnValuesToNotBeNull", {"column": "test_item_idx"}),
        ("ExpectColumnValuesToBeBetween", {"column": "test_item_idx", "min_value": 1, "max_value": n_items}),
    ]


def processed_items_expectations(data: DataConfig, n_items: int) -> list[Spec]:
    return [
        ("ExpectTableRowCountToEqual", {"value": n_items}),
        ("ExpectColumnValuesToBeUnique", {"column": "item_idx"}),
        ("ExpectColumnValuesToBeBetween", {"column": "item_idx", "min_value": 1, "max_value": n_items}),
        ("ExpectColumnValuesToNotBeNull", {"column": "item_id"}),
        ("ExpectColumnValuesToBeBetween", {"column": "n_interactions", "min_value": data.k_core}),
    ]


def run_suite(
    name: str, frame: pd.DataFrame, specs: list[Spec], out_dir: Path, *, index_columns: list[str] | None = None
) -> dict[str, Any]:
    """Validate `frame` against `specs` with an ephemeral GX context; save ``<out_dir>/<name>.json``.

    Returns the result as a JSON dict (``success``, ``results``...); raising is left to callers,
    which know how to explain a failure in terms of the data.
    """
    gx = _import_gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = context.data_sources.add_pandas("lite_rec").add_dataframe_asset(name=name)
    suite = context.suites.add(gx.ExpectationSuite(name=name))
    for cls_name, kwargs in specs:
        suite.add_expectation(getattr(gx.expectations, cls_name)(**kwargs))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=name, data=batch.add_batch_definition_whole_dataframe("whole"), suite=suite)
    )
    result_format: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": MAX_EXAMPLES}
    if index_columns:
        result_format["unexpected_index_column_names"] = index_columns
    result = definition.run(batch_parameters={"dataframe": frame}, result_format=result_format).to_json_dict()
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / f"{name}.json", result)
    return result


def _describe(kwargs: dict[str, Any]) -> str:
    shown = {k: v for k, v in kwargs.items() if k != "batch_id"}
    return ", ".join(f"{k}={v!r}" for k, v in shown.items())


Blame = Callable[[str | None, dict[str, Any]], str | None]


def explain_failures(result: dict[str, Any], blame: Blame | None = None) -> list[str]:
    """One readable line per failed expectation: name, column, rows failed, examples.

    `blame(column, kwargs)` may replace GX's row-level detail with a data-level explanation:
    the aggregate suite's frame has one summary row, and the culprits are raw rows.
    """
    lines = []
    for item in result["results"]:
        if item["success"]:
            continue
        cfg, res = item["expectation_config"], item.get("result") or {}
        line = f"{cfg['type']}({_describe(cfg['kwargs'])}): "
        extra = blame(cfg["kwargs"].get("column"), cfg["kwargs"]) if blame else None
        if extra:
            line += extra
        elif "unexpected_count" in res:
            line += f"{res['unexpected_count']} of {res.get('element_count')} rows failed"
            examples = res.get("partial_unexpected_index_list") or res.get("partial_unexpected_list") or []
            if examples:
                line += "; e.g. " + ", ".join(map(str, examples[:MAX_EXAMPLES]))
        elif "observed_value" in res:
            line += f"observed {res['observed_value']!r}"
        elif item.get("exception_info", {}).get("raised_exception"):
            line += f"could not run: {item['exception_info'].get('exception_message')}"
        lines.append(line)
    return lines


def raise_on_failure(checked: list[tuple[str, dict[str, Any], Path, Blame | None]],
                     sources: dict[str, Path | None] | None = None) -> None:
    """Raise one :class:`ValidationFailed` covering every failed suite in `checked`; `sources` names
    the input file each suite checked (a truncated or damaged file is then named, not only the rule)."""
    parts = []
    for name, result, path, blame in checked:
        if result["success"]:
            continue
        stats = result.get("statistics", {})
        lines = explain_failures(result, blame)
        source = (sources or {}).get(name)
        parts.append(
            f"validation suite '{name}'{f' of {source}' if source else ''} failed "
            f"{stats.get('unsuccessful_expectations', len(lines))} of "
            f"{stats.get('evaluated_expectations', '?')} expectations (results: {path}):\n"
            + "\n".join(f"  - {line}" for line in lines)
        )
    if parts:
        raise ValidationFailed("\n".join(parts))


@dataclass(frozen=True)
class RawSummary:
    """What the raw suites need, computed by DuckDB while the raw tables exist."""

    interactions: dict[str, Any]  # the row of raw_interactions_summary (aggregates + examples)
    items: pa.Table  # (item_id, title) of raw_items, title trimmed (Arrow: no pandas import yet)
    ts_range: tuple[int, int]  # plausible timestamp bounds used for the counts


def summarize_raw(con: duckdb.DuckDBPyConnection, data: DataConfig, now: float | None = None) -> RawSummary:
    """One DuckDB scan of raw_interactions and the items frame; no GX needed yet."""
    ts_range = ts_bounds(now)
    low, high = data.rating_bounds
    params = {"rating_low": low, "rating_high": high, "ts_low": ts_range[0], "ts_high": ts_range[1]}
    run_sql(con, "raw_interactions_summary", params)
    rel = con.sql("select * from raw_interactions_summary")
    row = dict(zip(rel.columns, rel.fetchall()[0], strict=True))
    con.execute("drop table raw_interactions_summary")
    items = con.sql("select item_id, trim(title) as title from raw_items").to_arrow_table()
    return RawSummary(row, items, ts_range)


def _raw_blame(summary: dict[str, Any]) -> Blame:
    def blame(column: str | None, kwargs: dict[str, Any]) -> str | None:
        if column == "row_count":
            return "the raw interactions table has no rows"
        if column not in _RAW_BLAME:
            return None
        field_name, count_col, examples_col = _RAW_BLAME[column]
        shown = ", ".join(
            f"row_no={e['row_no']} ({field_name}={e['value']!r})" if isinstance(e, dict) else f"row_no={e}"
            for e in summary[examples_col]
        )
        return (
            f"observed {column}={summary[column]!r}; {summary[count_col]} raw rows fail on field "
            f"'{field_name}' (row_no = 0-based data line), e.g. {shown}"
        )

    return blame


def validate_raw(summary: RawSummary, data: DataConfig, out_dir: Path,
                 files: tuple[Path, Path | None] | None = None) -> dict[str, Path]:
    """Suites ``raw_interactions`` (aggregates) and ``raw_items`` (row level); JSON paths by suite.

    Both suites run before anything is raised, so one error lists every problem; `files`
    (interactions, items) are named in it.
    """
    frame = pd.DataFrame([{k: summary.interactions[k] for k in _SUMMARY_SCALARS}])
    specs = raw_interactions_expectations(data, summary.ts_range)
    inter_result = run_suite("raw_interactions", frame, specs, out_dir)
    items = summary.items.to_pandas()
    items_result = run_suite("raw_items", items, raw_items_expectations(data.min_title_fraction), out_dir, index_columns=["item_id"])
    saved = {name: out_dir / f"{name}.json" for name in ("raw_interactions", "raw_items")}
    raise_on_failure(
        [
            ("raw_interactions", inter_result, saved["raw_interactions"], _raw_blame(summary.interactions)),
            ("raw_items", items_result, saved["raw_items"], None),
        ],
        sources=None if files is None else {"raw_interactions": files[0], "raw_items": files[1]},
    )
    return saved


def validate_processed(
    con: duckdb.DuckDBPyConnection, processed_dir: Path, data: DataConfig, out_dir: Path
) -> dict[str, Path]:
    """Suites ``processed_users`` and ``processed_items`` over the Parquet files in `processed_dir`.

    The files are read back as written, so what is validated is exactly what will be swapped in.
    """
    paths = {f"{stem}_path": str(processed_dir / f"{stem}.parquet") for stem in ("interactions", "sequences", "items")}
    count = "select count(*) from read_parquet($path)"
    n_users = con.execute(count, {"path": str(processed_dir / "user_map.parquet")}).fetchall()[0][0]
    n_items = con.execute(count, {"path": str(processed_dir / "item_map.parquet")}).fetchall()[0][0]
    suites = [
        ("processed_users", processed_users_expectations(data, n_users, n_items), ["user_idx"]),
        ("processed_items", processed_items_expectations(data, n_items), ["item_idx"]),
    ]
    checked: list[tuple[str, dict[str, Any], Path, Blame | None]] = []
    for name, specs, index in suites:
        run_sql(con, name, paths)
        frame = con.sql(f"select * from {name}").df()  # `name` is one of the two constants above
        result = run_suite(name, frame, specs, out_dir, index_columns=index)
        checked.append((name, result, out_dir / f"{name}.json", None))
    raise_on_failure(checked)
    return {name: path for name, _, path, _ in checked}
