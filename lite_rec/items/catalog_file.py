"""A file of new or changed items (``lite-rec add-items``): read, checked row by row, rendered to item texts.

Why its own reader and not the ingest stage: a catalog update arrives between trainings, as a
short file a person or a product feed wrote, and goes straight into a served model. A bad row
there must stop the update with an error that names the row and the field, before anything is
encoded or registered, so the model in service is never touched by it.

The schema (docs/serving.md, "Adding items without retraining"):

- CSV (UTF-8, a header line) or Parquet, by the file's suffix (``.csv``, ``.parquet`` / ``.pq``);
- ``item_id`` (required): the raw id, read as a string, unique in the file, not empty;
- ``title`` (required): not empty;
- any column the dataset's ``dataset.item_text_template`` reads (``genres`` for MovieLens,
  ``brand`` / ``description`` ... for Amazon): optional, a missing one renders as for an item
  without that field; no other column (a typo such as ``titel`` would silently drop text);
- each rendered item text at most :data:`MAX_TEXT_CHARS` characters (the item LLM reads only
  ``item_encoder.max_tokens`` tokens anyway: a longer text is a broken row, a whole file in one
  cell, more often than a real item).

Rows are numbered from 1 as a person counts data rows; a CSV's error also gives the line (the
header is line 1). Needs pandas and pyarrow only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from lite_rec.core.errors import DataError
from lite_rec.items.text import render_item_texts, template_fields

if TYPE_CHECKING:
    from lite_rec.core.config import DataConfig

__all__ = ["MAX_TEXT_CHARS", "REQUIRED_COLUMNS", "ItemFileError", "NewItems", "read_item_file"]

REQUIRED_COLUMNS = ("item_id", "title")
MAX_TEXT_CHARS = 2000  # rendered characters per item text


class ItemFileError(DataError):
    """The item file cannot be used: its schema, or a row (named in the message)."""


@dataclass(frozen=True)
class NewItems:
    """The file's items in file order, and the text the item LLM reads for each."""

    items: pd.DataFrame  # item_id, title, and the template's other columns present in the file (all str)
    texts: list[str]  # rendered dataset.item_text_template, one per row
    source: str  # the file, for messages and lineage

    def __len__(self) -> int:
        return len(self.items)


def _where(source: Path, row: int) -> str:
    """How a message names data row `row` (0-based): ``row 3`` (``line 4`` of a CSV)."""
    line = f", line {row + 2}" if source.suffix.lower() == ".csv" else ""
    return f"{source}: row {row + 1}{line}"


def _read(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise ItemFileError(f"{path}: expected a .csv or .parquet file of items (item_id, title, ...)")
    if not path.is_file():
        raise ItemFileError(f"{path}: no such file")
    try:
        if suffix == ".csv":
            # every value a string, an empty cell an empty string: "007" stays "007", and "" is checked below
            return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
        return pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - pandas and pyarrow raise many types for a broken file
        raise ItemFileError(f"{path}: cannot read it as {'CSV' if suffix == '.csv' else 'Parquet'} "
                            f"({type(exc).__name__}: {str(exc)[:300]})") from None


def _as_text(values: pd.Series) -> list[str | None]:
    """Cell values as stripped strings; None for missing (NULL, NaN) cells."""
    out: list[str | None] = []
    for value in values.tolist():
        if value is None or (isinstance(value, float) and math.isnan(value)):
            out.append(None)
        else:
            out.append(str(value).strip())
    return out


def read_item_file(path: Path | str, data: "DataConfig") -> NewItems:
    """Read and check an item file against the schema above; raise :class:`ItemFileError` naming
    the file and, for a bad value, the row and the field."""
    path = Path(path)
    frame = _read(path)
    allowed = list(dict.fromkeys([*REQUIRED_COLUMNS, *template_fields(data.item_text_template)]))
    columns = [str(c) for c in frame.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ItemFileError(f"{path}: missing column(s) {', '.join(missing)} (columns found: {', '.join(columns) or 'none'}; "
                            f"expected {', '.join(allowed)})")
    unknown = [c for c in columns if c not in allowed]
    if unknown:
        raise ItemFileError(f"{path}: unknown column(s) {', '.join(unknown)}: this dataset's item text reads "
                            f"{', '.join(allowed)} (dataset.item_text_template {data.item_text_template!r})")
    if len(columns) != len(set(columns)):
        raise ItemFileError(f"{path}: a column name appears twice ({', '.join(columns)})")
    if frame.empty:
        raise ItemFileError(f"{path}: no items (a header and no rows)")
    cells = {c: _as_text(frame[c]) for c in columns}
    first_row: dict[str, int] = {}
    for row, (item_id, title) in enumerate(zip(cells["item_id"], cells["title"], strict=True)):
        if not item_id:
            raise ItemFileError(f"{_where(path, row)}: field item_id is empty")
        if not title:
            raise ItemFileError(f"{_where(path, row)}: field title is empty (item_id {item_id!r}); every item needs a title")
        if item_id in first_row:
            raise ItemFileError(f"{_where(path, row)}: item_id {item_id!r} appears twice in the file "
                                f"(first at row {first_row[item_id] + 1}); give each item one row")
        first_row[item_id] = row
    items = pd.DataFrame({c: [v if v is not None else "" for v in cells[c]] for c in columns})
    render = items.assign(item_idx=range(1, len(items) + 1))
    for field in allowed:  # an optional template column the file lacks renders as a missing value
        if field not in render.columns:
            render[field] = None
    texts = render_item_texts(render, data, source=path)
    for row, text in enumerate(texts):
        if len(text) > MAX_TEXT_CHARS:
            longest = max(columns, key=lambda c: len(cells[c][row] or ""))
            raise ItemFileError(f"{_where(path, row)}: the item text is {len(text)} characters, more than {MAX_TEXT_CHARS} "
                                f"(field {longest} has {len(cells[longest][row] or '')}; item_id {cells['item_id'][row]!r})")
    return NewItems(items=items, texts=texts, source=str(path))
