"""Raw dump files -> the two DuckDB tables every later stage reads (docs/data.md).

Why DuckDB and not Python loops: ML-1m has a million lines and an Amazon category tens of
millions; DuckDB's ``read_csv``/``read_json`` stream them with explicit column types in about a
second per million rows and bounded memory. Each format has one SQL file per table in ``sql/``
(``raw_<format>_<table>.sql``); this module picks the files, binds their parameters, turns DuckDB
errors into :class:`DataError` messages that name the file and line, and swaps the results in
as ``raw_interactions``/``raw_items`` inside one transaction, so a bad file leaves the tables
of an earlier good load untouched. The one Python loop is the 2014 Amazon metadata, whose
lines are Python literals that no SQL reader parses.
"""

from __future__ import annotations

import ast
import gzip
import json
import re
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from lite_rec.core.config import DataConfig, resource_dir
from lite_rec.core.errors import DataError
from lite_rec.data.sources import RawFiles

if TYPE_CHECKING:
    import duckdb

SQL_DIR = resource_dir("sql")
CANONICAL = ("user_id", "item_id", "rating", "ts")  # raw_interactions' required fields
# The problem sentence of a DuckDB CSV error (the line after the offending line's text).
_CSV_PROBLEM = re.compile(r"(Expected Number of Columns|Error when converting|Invalid unicode|Value with unterminated"
                          r"|Could not convert|Maximum line size|.*not utf-8)")


@dataclass(frozen=True)
class TablePlan:
    """One SQL file run over one raw file, and what error messages need to know about it."""

    sql: str  # file stem in sql/, also the name of the table it creates
    path: Path  # the raw file the SQL reads (named in every error)
    params: dict[str, Any]
    header_lines: int = 0  # lines before the first data row: line = row_no + 1 + header_lines
    fields: dict[str, str] = field(default_factory=dict)  # canonical -> the source's field name
    optional: frozenset[str] = frozenset()  # canonical fields the source may lack


def sql_text(name: str) -> str:
    """The statement in ``sql/<name>.sql``."""
    return (SQL_DIR / f"{name}.sql").read_text(encoding="utf-8")


def _compression(path: Path) -> str:
    """Decide gzip by magic bytes, not by name: a truncated or renamed file is still caught."""
    with open(path, "rb") as fh:
        return "gzip" if fh.read(2) == b"\x1f\x8b" else "none"


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"{path}: raw file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty (0 bytes)")


def read_header(path: Path, sep: str) -> list[str]:
    """Field names of a header line (RecBole ``name:type`` -> ``name``); CRLF and BOM tolerated."""
    opener = gzip.open if _compression(path) == "gzip" else open
    try:
        with opener(path, "rb") as fh:
            first = fh.readline()
        line = first.decode("utf-8-sig").rstrip("\r\n")
    except (UnicodeDecodeError, EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{path}: line 1: cannot read the header line ({exc})") from exc
    if not line.strip():
        raise DataError(f"{path}: line 1: the header line is empty")
    return [name.split(":", 1)[0].strip() for name in line.split(sep)]


def map_header(path: Path, names: list[str], aliases: dict[str, tuple[str, ...]], types: dict[str, str],
               required: tuple[str, ...]) -> dict[str, str]:
    """Bind header fields by name: ``{column name: type}`` in file order, canonical names for
    recognised fields (first alias wins), ``_c<i>`` for the rest. Missing required -> DataError."""
    columns: dict[str, str] = {}
    taken: set[str] = set()
    for i, name in enumerate(names):
        canon = next((c for c, alias in aliases.items() if name in alias and c not in taken), None)
        if canon is None:
            columns[f"_c{i}"] = "varchar"
        else:
            taken.add(canon)
            columns[canon] = types.get(canon, "varchar")
    missing = [aliases[c][0] for c in required if c not in taken]
    if missing:
        raise DataError(
            f"{path}: line 1 (header): missing column {', '.join(repr(m) for m in missing)} "
            f"(found: {', '.join(names)})"
        )
    return columns


def _json_line_error(path: Path, line_no: int) -> str | None:
    """Python's complaint about JSON line `line_no` (1-based), or None. Error path only: it
    re-reads the file up to that line, because DuckDB names the line where parsing gave up,
    which for an object cut short is the line after the broken one."""
    opener = gzip.open if _compression(path) == "gzip" else open
    try:
        with opener(path, "rb") as fh:
            for n, raw in enumerate(fh, start=1):
                if n == line_no:
                    json.loads(raw.strip())
                    return None
    except ValueError as exc:
        return f"malformed JSON ({exc})"
    except (OSError, EOFError, zlib.error):
        return None
    return None


def explain_duckdb_error(exc: Exception, plan: TablePlan) -> DataError:
    """Keep the useful part of a DuckDB error (line, offending text, problem), name the file."""
    msg = str(exc)
    where = str(plan.path)
    csv_line = re.search(r"CSV Error on Line: (\d+)", msg)
    if csv_line:
        # "Original Line: <text>\n<problem>\n..." -- with CRLF files <text> starts on the next line.
        start = msg.find("Original Line:")
        block = msg[start + len("Original Line:"):] if start >= 0 else msg[csv_line.end():]
        lines: list[str] = []
        for line in block.splitlines():
            if lines and (not line.strip() or line.startswith("Possible")):
                break
            lines.append(line.strip())
        at = next((k for k, s in enumerate(lines) if _CSV_PROBLEM.match(s)), len(lines) - 1)
        problem = lines[at] if lines and lines[at] else "malformed line"
        original = " ".join(s for s in lines[:at] if s)
        shown = f" (line reads {original[:200]!r})" if start >= 0 and at > 0 else ""
        return DataError(f"{where}: line {csv_line.group(1)}: {problem}{shown}")
    json_line = re.search(r"(?:Malformed JSON|JSON transform error) in file \".*?\",(?: at byte \d+)? in line (\d+): (.*)", msg)
    if json_line:
        line_no, problem = int(json_line.group(1)), json_line.group(2).strip()
        if line_no > 1 and _json_line_error(plan.path, line_no - 1):  # a cut line is reported one late
            line_no, problem = line_no - 1, _json_line_error(plan.path, line_no - 1)
        return DataError(f"{where}: line {line_no}: {problem}")
    if "end of GZIP stream" in msg:
        return DataError(f"{where}: truncated gzip file (the compressed stream ends early)")
    if "GZIP" in msg or "zlib" in msg.lower():
        return DataError(f"{where}: corrupt gzip file ({msg.splitlines()[0]})")
    first = msg.splitlines()[0] if msg else type(exc).__name__
    return DataError(f"{where}: cannot be read as {plan.sql}: {first}")


# ---------------------------------------------------------------------------------------------
# Amazon 2014 metadata: Python-literal lines -> a Parquet file DuckDB can read


def _flatten(value: Any) -> str | None:
    """Lists (also lists of lists, as 2014 `categories`) -> unique strings joined with ', '."""
    if value is None:
        return None
    if not isinstance(value, (list, tuple)):
        return str(value)
    out: list[str] = []
    stack = list(value)
    while stack:
        item = stack.pop(0)
        if isinstance(item, (list, tuple)):
            stack[:0] = list(item)
        elif item is not None and str(item) not in out:
            out.append(str(item))
    return ", ".join(out)


def _literal_lines(path: Path, progress: bool) -> Iterator[tuple[int, dict[str, Any]]]:
    opener = gzip.open if _compression(path) == "gzip" else open
    line_no = 0
    try:
        with opener(path, "rb") as fh:
            for line_no, raw in enumerate(tqdm(fh, desc=path.name, unit=" lines", disable=not progress), start=1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DataError(f"{path}: line {line_no}: not valid UTF-8 (byte {exc.start}: {exc.reason})") from exc
                if not text.strip():
                    continue
                try:
                    record = ast.literal_eval(text)
                except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
                    try:
                        record = json.loads(text)
                    except ValueError:
                        raise DataError(f"{path}: line {line_no}: not a Python-literal or JSON record ({exc})") from exc
                if not isinstance(record, dict):
                    raise DataError(f"{path}: line {line_no}: expected a {{...}} record, got {type(record).__name__}")
                yield line_no, record
    except (EOFError, zlib.error) as exc:
        raise DataError(f"{path}: truncated gzip file after line {line_no} ({exc})") from exc
    except gzip.BadGzipFile as exc:
        raise DataError(f"{path}: corrupt gzip file ({exc})") from exc


def convert_python_literals(src: Path, dest: Path, *, progress: bool = True, batch_rows: int = 50_000) -> Path:
    """Stream 2014 metadata (one Python dict literal per line) into Parquet with the raw items
    columns plus ``row_no`` (0-based line). Memory stays bounded by `batch_rows`."""
    schema = pa.schema([(n, pa.string()) for n in ("item_id", "title", "brand", "categories", "description")]
                       + [("row_no", pa.int64())])
    batch: dict[str, list[Any]] = {n: [] for n in schema.names}
    with pq.ParquetWriter(dest, schema) as writer:
        for line_no, rec in _literal_lines(src, progress):
            batch["item_id"].append(None if rec.get("asin") is None else str(rec["asin"]))
            batch["title"].append(_flatten(rec.get("title")))
            batch["brand"].append(_flatten(rec.get("brand")))
            batch["categories"].append(_flatten(rec.get("categories")))
            batch["description"].append(_flatten(rec.get("description")))
            batch["row_no"].append(line_no - 1)
            if len(batch["row_no"]) >= batch_rows:
                writer.write_table(pa.table(batch, schema=schema))
                batch = {n: [] for n in schema.names}
        writer.write_table(pa.table(batch, schema=schema))
    return dest


# ---------------------------------------------------------------------------------------------
# Plans per format

_INTER_TYPES = {"user_id": "varchar", "item_id": "varchar", "rating": "double", "ts": "double"}
_RECBOLE_INTER = {"user_id": ("user_id",), "item_id": ("item_id",), "rating": ("rating",), "ts": ("timestamp",)}
_RECBOLE_ITEM = {"item_id": ("item_id",), "title": ("movie_title", "title"), "year": ("release_year",),
                 "genres": ("genre", "class", "genres"),
                 "brand": ("brand",), "categories": ("categories", "category"), "description": ("description",)}
_CSV_RATINGS = {"user_id": ("userId",), "item_id": ("movieId",), "rating": ("rating",), "ts": ("timestamp",)}
_CSV_MOVIES = {"item_id": ("movieId",), "title": ("title",), "genres": ("genres",)}
_AMAZON_FIELDS = {"user_id": "reviewerID", "item_id": "asin", "rating": "overall", "ts": "unixReviewTime"}


def _plans(raw: RawFiles, data: DataConfig, tmp: Path, progress: bool) -> tuple[TablePlan, TablePlan | None]:
    """The (interactions, items) SQL plans for `raw.format`."""
    inter, items = raw.interactions, raw.items
    for p in (inter, items):
        if p is not None:
            _require_file(p)
    base = {"compression": _compression(inter)}
    meta = {"compression": _compression(items) if items else "none"}
    desc = {"max_description_chars": data.max_description_chars}
    fmt = raw.format
    if fmt in ("ml-1m", "ml-100k"):
        stem = fmt.replace("-", "")
        return (TablePlan(f"raw_{stem}_ratings", inter, base),
                TablePlan(f"raw_{stem}_movies", items, meta) if items else None)
    if fmt == "ml-csv":
        cols = map_header(inter, read_header(inter, ","), _CSV_RATINGS, {**_INTER_TYPES, "ts": "bigint"}, CANONICAL)
        fields = {c: a[0] for c, a in _CSV_RATINGS.items()}
        ip = TablePlan("raw_mlcsv_ratings", inter, {**base, "columns": cols}, 1, fields)
        if items is None:
            return ip, None
        icols = map_header(items, read_header(items, ","), _CSV_MOVIES, {}, ("item_id", "title", "genres"))
        return ip, TablePlan("raw_mlcsv_movies", items, {**meta, "columns": icols}, 1, {"item_id": "movieId"})
    if fmt == "recbole":
        cols = map_header(inter, read_header(inter, "\t"), _RECBOLE_INTER, _INTER_TYPES, ("user_id", "item_id", "ts"))
        fields = {c: a[0] for c, a in _RECBOLE_INTER.items()}
        optional = frozenset({"rating"} - set(cols))
        ip = TablePlan("raw_recbole_inter", inter, {**base, "columns": cols}, 1, fields, optional)
        if items is None:
            return ip, None
        icols = map_header(items, read_header(items, "\t"), _RECBOLE_ITEM, {}, ("item_id",))
        return ip, TablePlan("raw_recbole_item", items, {**meta, **desc, "columns": icols}, 1)
    if fmt == "amazon-2018":
        ip = TablePlan("raw_amazon2018_reviews", inter, base, 0, _AMAZON_FIELDS)
        return ip, TablePlan("raw_amazon2018_meta", items, {**meta, **desc}, 0, {"item_id": "asin"}) if items else None
    if fmt == "amazon-2014":
        fields = {"user_id": "user", "item_id": "item", "rating": "rating", "ts": "timestamp"}
        ip = TablePlan("raw_amazon2014_ratings", inter, base, 0, fields)
        if items is None:
            return ip, None
        parquet = convert_python_literals(items, tmp / "meta.parquet", progress=progress)
        plan = TablePlan("raw_amazon2014_meta", items, {"path": str(parquet), **desc}, 0, {"item_id": "asin"})
        return ip, plan
    raise DataError(f"{inter}: unknown raw format {fmt!r}")


# ---------------------------------------------------------------------------------------------
# Running the plans


def _run(con: "duckdb.DuckDBPyConnection", plan: TablePlan) -> None:
    import duckdb

    params = {"path": str(plan.path), **plan.params}
    try:
        con.execute(sql_text(plan.sql), params)
    except duckdb.Error as exc:
        raise explain_duckdb_error(exc, plan) from exc


def _install(con: "duckdb.DuckDBPyConnection", plan: TablePlan, final: str) -> None:
    """Run `plan`, rename its table to `final`, and check row count and required fields."""
    _run(con, plan)
    con.execute(f"drop table if exists {final}")  # identifiers are constants of this module
    con.execute(f"alter table {plan.sql} rename to {final}")
    n_rows, *missing = con.sql(sql_text(f"{final}_check")).fetchall()[0]
    if n_rows == 0:
        raise DataError(f"{plan.path}: no data rows (the file holds no records)")
    names = CANONICAL if final == "raw_interactions" else ("item_id",)
    for canon, row_no in zip(names, missing):
        if row_no is not None and canon not in plan.optional:
            line = row_no + 1 + plan.header_lines
            name = plan.fields.get(canon, canon)
            raise DataError(f"{plan.path}: line {line}: field {name!r} is missing or empty")
    if final == "raw_items":
        con.execute("alter table raw_items drop column row_no")


def load_raw(con: "duckdb.DuckDBPyConnection", raw: RawFiles, data: DataConfig, *, progress: bool = True) -> None:
    """Create ``raw_interactions(user_id, item_id, rating, ts, row_no)`` and ``raw_items(item_id,
    title, genres, brand, categories, description)`` in `con` from `raw` (docs/data.md).

    Nothing is filtered here (no threshold, no k-core): that is the ingest SQL's job. Amazon
    descriptions are cut to ``data.max_description_chars``. All or nothing: on any error the
    tables of an earlier load stay as they were (one transaction, rolled back).
    """
    con.execute("set preserve_insertion_order = true")  # row_no relies on file order
    with tempfile.TemporaryDirectory(prefix="lite-rec-raw-") as tmp:
        inter_plan, items_plan = _plans(raw, data, Path(tmp), progress)
        con.begin()
        try:
            _install(con, inter_plan, "raw_interactions")
            if items_plan is None:
                con.execute(sql_text("raw_no_items"))
                con.execute("drop table if exists raw_items")
                con.execute("alter table raw_no_items rename to raw_items")
            else:
                _install(con, items_plan, "raw_items")
        except BaseException:
            con.rollback()
            raise
        con.commit()
