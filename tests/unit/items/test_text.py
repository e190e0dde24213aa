"""Item text rendering: templates, missing values and their labels, description slicing."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from lite_rec.core.config import DataConfig, SourceConfig, build_config
from lite_rec.core.errors import DataError
from lite_rec.items.text import render_item_texts, template_fields


def _items(rows: list[dict], path: Path) -> pd.DataFrame:
    """Write rows as items.parquet (the data stage's contract) and read them back."""
    cols = ["item_idx", "item_id", "title", "genres", "brand", "categories", "description"]
    df = pd.DataFrame([{c: r.get(c) for c in cols} for r in rows], columns=cols)
    df["item_idx"] = df["item_idx"].astype("int64")
    for c in cols[1:]:
        df[c] = df[c].astype("string")
    df.to_parquet(path, index=False)
    return pd.read_parquet(path)


def _data(template: str, max_chars: int = 300) -> DataConfig:
    return DataConfig(name="t", source=SourceConfig(format="ml-1m"), item_text_template=template, max_description_chars=max_chars)


def test_movielens_template_from_shipped_config(tmp_path: Path) -> None:
    items = _items(
        [
            {"item_idx": 1, "item_id": "m1", "title": "Toy Story (1995)", "genres": "Animation, Children's, Comedy"},
            {"item_idx": 2, "item_id": "m2", "title": "Heat (1995)", "genres": None},
            {"item_idx": 3, "item_id": "m3", "title": None, "genres": "Drama"},
            {"item_idx": 4, "item_id": "m4", "title": "  Multi\n  line  ", "genres": ""},
        ],
        tmp_path / "items.parquet",
    )
    texts = render_item_texts(items, build_config("ml-1m").dataset)
    assert texts == [
        "Title: Toy Story (1995). Genres: Animation, Children's, Comedy.",
        "Title: Heat (1995).",
        "Genres: Drama.",
        "Title: Multi line.",
    ]


def test_amazon_template_drops_missing_labels_and_slices_description(tmp_path: Path) -> None:
    items = _items(
        [
            {"item_idx": 1, "item_id": "B01", "title": "Lego Set", "categories": "Toys, Building",
             "description": "Bricks for all ages and more"},
            {"item_idx": 2, "item_id": "B02", "title": "Puzzle", "brand": "Ravensburger"},
            {"item_idx": 3, "item_id": "B03", "title": "Kite", "brand": "Sky", "categories": "Outdoor", "description": "   "},
        ],
        tmp_path / "items.parquet",
    )
    data = build_config("amazon-toys").dataset.model_copy(update={"max_description_chars": 10})
    assert render_item_texts(items, data) == [
        "Title: Lego Set. Categories: Toys, Building. Description: Bricks for",
        "Title: Puzzle. Brand: Ravensburger.",
        "Title: Kite. Brand: Sky. Categories: Outdoor.",
    ]
    none = render_item_texts(items, data.model_copy(update={"max_description_chars": 0}))
    assert none[0] == "Title: Lego Set. Categories: Toys, Building."


def test_brackets_and_commas_around_an_empty_field_are_removed(tmp_path: Path) -> None:
    items = _items(
        [
            {"item_idx": 1, "item_id": "a", "title": "Heat", "genres": "Crime"},
            {"item_idx": 2, "item_id": "b", "title": "Alien", "genres": None},
            {"item_idx": 3, "item_id": "c", "title": None, "genres": "Horror"},
        ],
        tmp_path / "items.parquet",
    )
    assert render_item_texts(items, _data("{title} ({genres})")) == ["Heat (Crime)", "Alien", "(Horror)"]
    assert render_item_texts(items, _data("{title}, {genres}")) == ["Heat, Crime", "Alien", "Horror"]


def test_non_text_columns_and_format_specs_render(tmp_path: Path) -> None:
    items = _items([{"item_idx": 1, "item_id": "x", "title": "Heat"}, {"item_idx": 2, "item_id": "y", "title": "Up"}], tmp_path / "i.parquet")
    assert render_item_texts(items, _data("{title} #{item_idx:03d}")) == ["Heat #001", "Up #002"]
    assert template_fields("Title: {title}. Genres: {genres}.") == ["title", "genres"]


def test_unknown_template_field_names_field_and_columns(tmp_path: Path) -> None:
    items = _items([{"item_idx": 1, "item_id": "x", "title": "Heat"}], tmp_path / "items.parquet")
    with pytest.raises(DataError, match=r"\{year\}.*items\.parquet has no such column.*columns: item_idx, item_id, title"):
        render_item_texts(items, _data("{title} ({year})"), source=tmp_path / "items.parquet")
    with pytest.raises(DataError, match="plain column name"):
        render_item_texts(items, _data("{} {title}"))
    with pytest.raises(DataError, match="not a valid str.format template"):
        render_item_texts(items, _data("{title"))


def test_item_idx_out_of_order_is_rejected_with_row(tmp_path: Path) -> None:
    items = _items(
        [{"item_idx": 1, "item_id": "a", "title": "A"}, {"item_idx": 3, "item_id": "b", "title": "B"}, {"item_idx": 2, "item_id": "c", "title": "C"}],
        tmp_path / "items.parquet",
    )
    with pytest.raises(DataError, match=r"items\.parquet: item_idx must run 1\.\.N.*row 1 has item_idx 3, expected 2"):
        render_item_texts(items, _data("{title}"), source=tmp_path / "items.parquet")


def test_duplicate_and_null_item_ids_are_rejected(tmp_path: Path) -> None:
    dup = _items([{"item_idx": 1, "item_id": "a", "title": "A"}, {"item_idx": 2, "item_id": "a", "title": "B"}], tmp_path / "d.parquet")
    with pytest.raises(DataError, match=r"item_id 'a' appears twice \(second at row 1, item_idx 2\)"):
        render_item_texts(dup, _data("{title}"))
    null = _items([{"item_idx": 1, "item_id": None, "title": "A"}], tmp_path / "n.parquet")
    with pytest.raises(DataError, match=r"item_id is NULL at row 0"):
        render_item_texts(null, _data("{title}"))
