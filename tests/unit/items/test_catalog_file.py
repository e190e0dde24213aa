"""The item file of ``lite-rec add-items``: every bad input is an error naming the file, the row and the field.

Hand-written files of a few rows, CSV and Parquet, against the ml-100k item text
(``Title: {title}. Genres: {genres}.``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from lite_rec.core.config import build_config
from lite_rec.items.catalog_file import MAX_TEXT_CHARS, ItemFileError, read_item_file

DATA = build_config("ml-100k").dataset


def _csv(tmp_path: Path, text: str, name: str = "items.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_a_good_file_renders_the_dataset_item_text_in_file_order(tmp_path: Path) -> None:
    path = _csv(tmp_path, "item_id,title,genres\n007,Brand New Film (2026),Drama|War\nx9,Quiet Place,\n")
    new = read_item_file(path, DATA)
    assert new.items["item_id"].tolist() == ["007", "x9"]  # ids stay strings: no 007 -> 7
    assert new.texts == ["Title: Brand New Film (2026). Genres: Drama|War.", "Title: Quiet Place."]
    # the optional template column may be left out; Parquet reads the same
    pq = tmp_path / "items.parquet"
    pd.DataFrame({"item_id": ["a"], "title": ["Only A Title"]}).to_parquet(pq, index=False)
    assert read_item_file(pq, DATA).texts == ["Title: Only A Title."]


def test_a_duplicate_item_id_names_both_rows(tmp_path: Path) -> None:
    path = _csv(tmp_path, "item_id,title\na,One\nb,Two\na,Three\n")
    with pytest.raises(ItemFileError, match=r"items\.csv: row 3, line 4: item_id 'a' appears twice in the file \(first at row 1\)"):
        read_item_file(path, DATA)


@pytest.mark.parametrize(("body", "message"), [
    ("item_id,title\na,One\n,Two\n", r"row 2, line 3: field item_id is empty"),
    ("item_id,title\na,One\nb,   \n", r"row 2, line 3: field title is empty \(item_id 'b'\)"),
])
def test_an_empty_field_names_its_row_and_field(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ItemFileError, match=message):
        read_item_file(_csv(tmp_path, body), DATA)


def test_an_oversize_text_names_the_row_and_the_longest_field(tmp_path: Path) -> None:
    path = _csv(tmp_path, f"item_id,title,genres\na,Fine,Drama\nb,Also fine,{'Drama|' * (MAX_TEXT_CHARS // 6 + 1)}\n")
    with pytest.raises(ItemFileError, match=rf"row 2, line 3: the item text is \d+ characters, more than {MAX_TEXT_CHARS} "
                                            r"\(field genres has \d+; item_id 'b'\)"):
        read_item_file(path, DATA)


@pytest.mark.parametrize(("body", "message"), [
    ("id,title\na,One\n", r"missing column\(s\) item_id \(columns found: id, title; expected item_id, title, genres\)"),
    ("item_id,titel\na,One\n", r"missing column\(s\) title"),
    ("item_id,title,price\na,One,3\n", r"unknown column\(s\) price: this dataset's item text reads item_id, title, genres"),
    ("item_id,title\n", r"no items \(a header and no rows\)"),
])
def test_a_file_of_the_wrong_schema_is_refused(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ItemFileError, match=message):
        read_item_file(_csv(tmp_path, body), DATA)


def test_files_that_cannot_be_read_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ItemFileError, match=r"expected a \.csv or \.parquet file"):
        read_item_file(_csv(tmp_path, "item_id,title\na,b\n", "items.json"), DATA)
    with pytest.raises(ItemFileError, match="no such file"):
        read_item_file(tmp_path / "missing.csv", DATA)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(ItemFileError, match=r"broken\.parquet: cannot read it as Parquet"):
        read_item_file(broken, DATA)
