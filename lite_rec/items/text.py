"""Item text: the string the item LLM reads for each item (the paper's "Item LLM", T_i).

Why a template: the paper feeds ML-1m items as title + genres and Amazon items as title plus
other metadata. Each dataset config carries ``dataset.item_text_template`` (``str.format``
syntax over the columns of ``items.parquet``), so changing what the encoder sees is a config
change, recorded with the run, and the item-vector cache notices it through the per-item text
hash.

Missing values (NULL, NaN, empty strings) render as ``""``, and the label that introduced
them is removed with them: ``"Title: {title}. Brand: {brand}. Description: {description}"``
with no brand gives ``"Title: X. Description: Y"``, not ``"Title: X. Brand: . Description: Y"``.
A dangling ``"Brand: ."`` is noise tokens that every brand-less item shares, which pulls
unrelated items' vectors together.

The rule, per template field whose value is empty:
- its *label* is the literal text just before it, back to the last sentence separator
  (``.``, ``;``, ``|`` or a newline) of that literal, and is dropped;
- its *suffix* is a closing bracket and/or one punctuation mark right after it, also dropped.
Whitespace runs are then collapsed and the text stripped.

Amazon descriptions can run to thousands of characters; ``dataset.max_description_chars``
bounds the ``description`` column (a plain character slice) before it is rendered, since the
encoder truncates at ``item_encoder.max_tokens`` anyway and long strings only cost time.

This module needs pandas only (no duckdb, pydantic or torch), so it runs on GPU workers too.
"""

from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from lite_rec.core.errors import DataError

if TYPE_CHECKING:
    from lite_rec.core.config import DataConfig

__all__ = ["TemplateError", "render_item_texts", "template_fields"]

_LABEL_RE = re.compile(r"[^.;|\n]*$")  # tail of a literal after its last separator
_SUFFIX_RE = re.compile(r"^[ \t]*[)\]]?[.,;:|]?")  # what closes an empty field


class TemplateError(DataError):
    """``dataset.item_text_template`` cannot be rendered over the item columns."""


@dataclass(frozen=True)
class _Piece:
    """One field of a parsed template together with the literal text before it."""

    literal: str  # text before the field
    field: str | None  # column name; None for the trailing literal
    spec: str  # format spec after ':'
    conversion: str | None  # 'r', 's', 'a' or None


def template_fields(template: str) -> list[str]:
    """Column names a template reads, in order (``"{title} ({genres})"`` -> title, genres)."""
    return [p.field for p in _parse(template) if p.field is not None]


def _parse(template: str) -> list[_Piece]:
    """Split a template into (literal, field) pieces; reject what str.format would reject."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise TemplateError(f"dataset.item_text_template {template!r} is not a valid str.format template: {exc}") from None
    pieces: list[_Piece] = []
    for literal, field, spec, conversion in parsed:
        if field is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", field):
            raise TemplateError(
                f"dataset.item_text_template {template!r}: field {{{field}}} must be a plain column "
                f"name such as {{title}} (positional fields, indexing and attributes are not supported)"
            )
        pieces.append(_Piece(literal, field, spec or "", conversion))
    return pieces


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _format_value(value: Any, piece: _Piece, max_chars: int | None) -> str:
    """One cell as text: missing -> "", whitespace collapsed, optionally sliced."""
    if _is_missing(value):
        return ""
    if piece.conversion == "r":
        value = repr(value)
    elif piece.conversion == "a":
        value = ascii(value)
    elif piece.conversion == "s":
        value = str(value)
    elif not isinstance(value, str) and not piece.spec:
        value = str(value)
    text = format(value, piece.spec)
    text = " ".join(text.split())
    if max_chars is not None:
        text = text[:max_chars].rstrip()
    return text


def _render_one(pieces: list[_Piece], values: list[str]) -> str:
    """Join literals and values, dropping the label and suffix of every empty value."""
    # literals[k] precedes field k; the final literal follows the last field.
    literals = [p.literal for p in pieces]
    head = [0] * len(literals)  # chars cut from the start of each literal
    tail = [len(lit) for lit in literals]  # each literal is kept up to here
    for k, value in enumerate(values):
        if value:
            continue
        tail[k] = min(tail[k], _LABEL_RE.search(literals[k]).start())  # type: ignore[union-attr]
        if k + 1 < len(literals):
            head[k + 1] = max(head[k + 1], _SUFFIX_RE.match(literals[k + 1]).end())  # type: ignore[union-attr]
    out: list[str] = []
    for k, literal in enumerate(literals):
        out.append(literal[head[k] : max(head[k], tail[k])])
        if k < len(values):
            out.append(values[k])
    return " ".join("".join(out).split())


def _check_order(items: pd.DataFrame, source: str) -> None:
    """item_idx must be exactly 1..N in row order: row i of the vectors is item_idx i."""
    if "item_idx" not in items.columns:
        raise DataError(f"{source}: column 'item_idx' is missing (columns: {', '.join(map(str, items.columns))})")
    if "item_id" not in items.columns:
        raise DataError(f"{source}: column 'item_id' is missing (columns: {', '.join(map(str, items.columns))})")
    idx = items["item_idx"].tolist()
    for row, value in enumerate(idx):
        if _is_missing(value) or int(value) != row + 1:
            raise DataError(
                f"{source}: item_idx must run 1..N in row order (docs/data.md); "
                f"row {row} has item_idx {value!r}, expected {row + 1}"
            )
    ids = items["item_id"]
    if ids.isna().any():
        row = int(ids.isna().to_numpy().nonzero()[0][0])
        raise DataError(f"{source}: item_id is NULL at row {row} (item_idx {row + 1})")
    dup = ids.duplicated()
    if dup.any():
        row = int(dup.to_numpy().nonzero()[0][0])
        raise DataError(f"{source}: item_id {ids.iloc[row]!r} appears twice (second at row {row}, item_idx {row + 1})")


def render_item_texts(items: pd.DataFrame, data: "DataConfig", *, source: str | Path = "items.parquet") -> list[str]:
    """Render ``data.item_text_template`` for every item, in item_idx order (length N).

    `items` follows the ``items.parquet`` contract (docs/data.md): item_idx 1..N in row
    order. `source` names the file in error messages. A template field that is not a column
    raises :class:`DataError` naming the field and the available columns.
    """
    source = str(source)
    pieces = _parse(data.item_text_template)
    fields = [p.field for p in pieces if p.field is not None]
    missing = [f for f in fields if f not in items.columns]
    if missing:
        raise TemplateError(
            f"dataset.item_text_template uses {', '.join('{' + f + '}' for f in missing)}, "
            f"but {source} has no such column (columns: {', '.join(map(str, items.columns))})"
        )
    _check_order(items, source)
    field_pieces = [p for p in pieces if p.field is not None]
    columns = [items[p.field].tolist() for p in field_pieces]  # type: ignore[index]
    limits = [data.max_description_chars if p.field == "description" else None for p in field_pieces]
    texts: list[str] = []
    for row in range(len(items)):
        values = [_format_value(col[row], p, lim) for col, p, lim in zip(columns, field_pieces, limits)]
        texts.append(_render_one(pieces, values))
    return texts
