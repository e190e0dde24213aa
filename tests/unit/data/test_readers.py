"""load_raw(): every raw format -> the same two tables, and a clear error for each bad input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import duckdb
import pytest

from lite_rec.core.config import DataConfig, SourceConfig
from lite_rec.core.errors import DataError
from lite_rec.data.readers import load_raw
from lite_rec.data.sources import RawFiles
from tests.helpers import raw_files as rf


def _data(max_description_chars: int = 300) -> DataConfig:
    return DataConfig(name="tiny", source=SourceConfig(format="ml-1m"), max_description_chars=max_description_chars)


def _load(fmt: str, interactions: Path, items: Path | None, *, con=None, data: DataConfig | None = None):
    con = con or duckdb.connect()
    load_raw(con, RawFiles(fmt, interactions, items, "test", "-"), data or _data(), progress=False)
    return con


def _rows(con, table: str) -> list[tuple]:
    order = "row_no" if table == "raw_interactions" else "rowid"
    return con.sql(f"select * from {table} order by {order}").fetchall()


# The tiny RATINGS of tests.helpers.raw_files, as every reader must produce them (file order).
def _expected(user: str = "", item: str = "") -> list[tuple]:
    return [(f"{user}{u}", f"{item}{i}", r, t, n) for n, (u, i, r, t) in enumerate(rf.RATINGS)]


MOVIE_ROWS = [
    ("10", "Café Society (1995)", "Comedy, Drama", None, None, None),
    ("20", "City of Lost Children, The (1995)", "Adventure, Sci-Fi", None, None, None),
    ("30", '"Great Performances" Cats (1998)', "Musical", None, None, None),
]


@pytest.mark.parametrize("fmt, writer", [("ml-1m", rf.write_ml1m), ("ml-100k", rf.write_ml100k),
                                         ("ml-csv", rf.write_ml_csv)])
def test_movielens_formats_give_identical_tables(tmp_path: Path, fmt: str, writer) -> None:
    con = _load(fmt, *writer(tmp_path))
    assert _rows(con, "raw_interactions") == _expected()
    assert _rows(con, "raw_items") == MOVIE_ROWS


def test_tables_have_the_documented_schema(tmp_path: Path) -> None:
    con = _load("ml-1m", *rf.write_ml1m(tmp_path))
    schema = con.sql("select table_name, column_name, data_type from information_schema.columns "
                     "where table_name like 'raw_%' order by table_name, ordinal_position").fetchall()
    assert schema == [
        ("raw_interactions", "user_id", "VARCHAR"), ("raw_interactions", "item_id", "VARCHAR"),
        ("raw_interactions", "rating", "DOUBLE"), ("raw_interactions", "ts", "BIGINT"),
        ("raw_interactions", "row_no", "BIGINT"),
        ("raw_items", "item_id", "VARCHAR"), ("raw_items", "title", "VARCHAR"), ("raw_items", "genres", "VARCHAR"),
        ("raw_items", "brand", "VARCHAR"), ("raw_items", "categories", "VARCHAR"),
        ("raw_items", "description", "VARCHAR"),
    ]


def test_ml100k_genre_flags_become_names(tmp_path: Path) -> None:
    movies = [("1", "Toy Story (1995)", ["Animation", "Children's", "Comedy"]), ("267", "unknown", ["unknown"]),
              ("5", "Copycat (1995)", ["Crime", "Drama", "Thriller", "Western", "Film-Noir"])]
    con = _load("ml-100k", *rf.write_ml100k(tmp_path, movies=movies))
    assert con.sql("select item_id, genres from raw_items order by rowid").fetchall() == [
        ("1", "Animation, Children's, Comedy"), ("267", "unknown"), ("5", "Crime, Drama, Film-Noir, Thriller, Western"),
    ]


def test_ml_csv_marks_no_genres_as_null(tmp_path: Path) -> None:
    con = _load("ml-csv", *rf.write_ml_csv(tmp_path, movies=[("7", "Quiet, Please (2001)", [])]))
    assert _rows(con, "raw_items") == [("7", "Quiet, Please (2001)", None, None, None, None)]


def test_amazon_2018_reviews_and_metadata(tmp_path: Path) -> None:
    con = _load("amazon-2018", *rf.write_amazon_2018(tmp_path))
    assert _rows(con, "raw_interactions") == _expected("A", "B")
    assert _rows(con, "raw_items") == [
        ("B10", "Café Society (1995)", None, "Brand 10", "Comedy, Drama", "First part., Second part."),
        ("B20", "City of Lost Children, The (1995)", None, "Brand 20", "Adventure, Sci-Fi",
         "About City of Lost Children, The (1995)."),
        ("B30", '"Great Performances" Cats (1998)', None, "Brand 30", "Musical",
         'About "Great Performances" Cats (1998).'),
    ]


def test_amazon_metadata_keeps_first_record_per_asin_and_cuts_descriptions(tmp_path: Path) -> None:
    meta = [{"asin": "B1", "title": "First", "description": "abcdefghij", "category": []},
            {"asin": "B2", "title": "Other", "description": ["xy", "z"]},
            {"asin": "B1", "title": "Repeated", "description": "zzz"}]
    con = _load("amazon-2018", *rf.write_amazon_2018(tmp_path, meta=meta), data=_data(max_description_chars=4))
    assert _rows(con, "raw_items") == [("B1", "First", None, None, None, "abcd"), ("B2", "Other", None, None, None, "xy, ")]


def test_amazon_2014_ratings_and_python_literal_metadata(tmp_path: Path) -> None:
    con = _load("amazon-2014", *rf.write_amazon_2014(tmp_path), data=_data(max_description_chars=12))
    assert _rows(con, "raw_interactions") == _expected("A", "B")
    assert _rows(con, "raw_items") == [
        ("B10", "Café Society (1995)", None, "Brand 10", "Toys & Games, Comedy, Drama, Gifts", "It's Café So"),
        ("B20", "City of Lost Children, The (1995)", None, "Brand 20", "Toys & Games, Adventure, Sci-Fi, Gifts",
         "It's City of"),
        ("B30", '"Great Performances" Cats (1998)', None, "Brand 30", "Toys & Games, Musical, Gifts", "It's \"Great "),
    ]


def test_recbole_atomic_files_with_crlf_and_title_ids(tmp_path: Path) -> None:
    con = _load("recbole", *rf.write_recbole(tmp_path))
    titles = {i: t for i, t, _ in rf.MOVIES}
    assert _rows(con, "raw_interactions") == [(f"u{u}", titles[i], r, t, n) for n, (u, i, r, t) in enumerate(rf.RATINGS)]
    # release_year is folded back into the title, as in the GroupLens files.
    assert _rows(con, "raw_items") == [
        ("Café Society (1995)", "Café Society (1995)", "Comedy, Drama", None, None, None),
        ("City of Lost Children, The (1995)", "City of Lost Children, The (1995)", "Adventure, Sci-Fi", None, None, None),
        ('"Great Performances" Cats (1998)', '"Great Performances" Cats (1998)', "Musical", None, None, None),
    ]


def test_recbole_columns_are_bound_by_name_not_position(tmp_path: Path) -> None:
    inter, items = rf.write_recbole(
        tmp_path, newline="\n",
        inter_header=["timestamp:float", "label:float", "item_id:token", "user_id:token"],
        inter_rows=[(978300760.0, 1, "242", "196"), (50, 0, "302", "186")],
        item_header=["class:token_seq", "item_id:token", "movie_title:token_seq"],
        item_rows=[("Animation Children's", "242", "Kolya"), ("", "302", "L.A. Confidential")],
    )
    con = _load("recbole", inter, items)
    assert _rows(con, "raw_interactions") == [("196", "242", None, 978300760, 0), ("186", "302", None, 50, 1)]
    assert _rows(con, "raw_items") == [("242", "Kolya", "Animation, Children's", None, None, None),
                                       ("302", "L.A. Confidential", None, None, None, None)]


def test_missing_items_file_gives_an_empty_items_table(tmp_path: Path) -> None:
    inter, _ = rf.write_ml1m(tmp_path)
    con = _load("ml-1m", inter, None)
    assert len(_rows(con, "raw_interactions")) == 5
    assert con.sql("select count(*) from raw_items").fetchall() == [(0,)]
    assert [c[0] for c in con.sql("describe raw_items").fetchall()] == [
        "item_id", "title", "genres", "brand", "categories", "description"]


def test_row_no_follows_file_order_on_a_large_file(tmp_path: Path) -> None:
    n = 200_000  # several DuckDB row groups and threads: row_no must still be the line position
    (tmp_path / "ratings.dat").write_text("".join(f"{k % 97}::{k % 31}::{k % 5 + 1}::{k}\n" for k in range(n)))
    con = duckdb.connect(config={"threads": 4})
    _load("ml-1m", tmp_path / "ratings.dat", None, con=con)
    assert con.sql("select count(*), count(*) filter (where ts <> row_no) from raw_interactions").fetchall() == [(n, 0)]


# ---------------------------------------------------------------------------------------------
# Bad input: each names the file, the line or field, and the problem


def _fails(fmt: str, interactions: Path, items: Path | None = None) -> str:
    with pytest.raises(DataError) as info:
        _load(fmt, interactions, items)
    return str(info.value)


def test_wrong_field_count_names_file_and_line(tmp_path: Path) -> None:
    path = rf.write_lines(tmp_path / "ratings.dat", ["1::10::5::300", "1::20::3", "2::10::4::100"])
    assert _fails("ml-1m", path) == (f"{path}: line 2: Expected Number of Columns: 4 Found: 3 "
                                     "(line reads '1::20::3')")


def test_non_numeric_rating_names_file_line_and_column(tmp_path: Path) -> None:
    path = rf.write_lines(tmp_path / "ratings.csv", ["userId,movieId,rating,timestamp", "1,10,5.0,300", "1,20,five,1"])
    assert _fails("ml-csv", path) == (f'{path}: line 3: Error when converting column "rating". Could not convert '
                                      "string \"five\" to 'DOUBLE' (line reads '1,20,five,1')")


def test_invalid_utf8_names_file_and_line(tmp_path: Path) -> None:
    inter, items = rf.write_recbole(tmp_path)
    inter.write_bytes(inter.read_bytes().replace("Café".encode(), b"Caf\xe9", 1))  # latin-1 byte in a UTF-8 file
    message = _fails("recbole", inter, items)
    assert message.startswith(f"{inter}: line 2: Invalid unicode (byte sequence mismatch)")


def test_malformed_json_names_file_and_line(tmp_path: Path) -> None:
    inter, meta = rf.write_amazon_2018(tmp_path)
    lines = [json.dumps(r) for r in rf.amazon_2018_reviews()]
    inter.write_bytes(gzip.compress("\n".join([lines[0], lines[1][:30], *lines[2:]]).encode()))
    # DuckDB gives up on line 3 (JSON may span lines); the message names the broken line 2.
    assert _fails("amazon-2018", inter, meta) == (f"{inter}: line 2: malformed JSON (Expecting value: "
                                                  "line 1 column 30 (char 29))")


def test_json_rating_that_is_not_a_number(tmp_path: Path) -> None:
    reviews = rf.amazon_2018_reviews()
    reviews[1]["overall"] = "five"
    inter, meta = rf.write_amazon_2018(tmp_path, reviews=reviews)
    assert _fails("amazon-2018", inter, meta) == f'{inter}: line 2: Failed to cast value to numerical: "five"'


def test_json_record_without_asin_names_line_and_field(tmp_path: Path) -> None:
    reviews = rf.amazon_2018_reviews()
    del reviews[2]["asin"]
    inter, meta = rf.write_amazon_2018(tmp_path, reviews=reviews)
    assert _fails("amazon-2018", inter, meta) == f"{inter}: line 3: field 'asin' is missing or empty"


def test_metadata_without_asin_names_line_and_field(tmp_path: Path) -> None:
    meta = rf.amazon_2018_meta()
    del meta[1]["asin"]
    inter, items = rf.write_amazon_2018(tmp_path, meta=meta)
    assert _fails("amazon-2018", inter, items) == f"{items}: line 2: field 'asin' is missing or empty"


def test_recbole_header_without_item_id(tmp_path: Path) -> None:
    inter, items = rf.write_recbole(tmp_path, inter_header=["user_id:token", "rating:float", "timestamp:float"],
                                    inter_rows=[("u1", 5, 1)])
    assert _fails("recbole", inter, items) == (f"{inter}: line 1 (header): missing column 'item_id' "
                                               "(found: user_id, rating, timestamp)")


def test_csv_header_without_rating(tmp_path: Path) -> None:
    inter = rf.write_lines(tmp_path / "ratings.csv", ["userId,movieId,timestamp", "1,2,3"])
    assert _fails("ml-csv", inter) == (f"{inter}: line 1 (header): missing column 'rating' "
                                       "(found: userId, movieId, timestamp)")


def test_truncated_gzip(tmp_path: Path) -> None:
    inter, meta = rf.write_amazon_2018(tmp_path, reviews=rf.amazon_2018_reviews(rf.RATINGS * 4000))
    data = inter.read_bytes()
    inter.write_bytes(data[: len(data) // 2])
    assert _fails("amazon-2018", inter, meta) == f"{inter}: truncated gzip file (the compressed stream ends early)"


def test_truncated_gzip_of_python_literal_metadata(tmp_path: Path) -> None:
    meta = [{"asin": f"B{k}", "title": f"Item {k}", "description": "d" * (k % 50)} for k in range(4_000)]
    inter, items = rf.write_amazon_2014(tmp_path, meta=meta)
    data = items.read_bytes()
    items.write_bytes(data[: len(data) // 2])
    message = _fails("amazon-2014", inter, items)
    assert message.startswith(f"{items}: truncated gzip file after line ")


def test_python_literal_metadata_with_a_broken_line(tmp_path: Path) -> None:
    inter, items = rf.write_amazon_2014(tmp_path)
    items.write_bytes(gzip.compress(b"{'asin': 'B10', 'title': 'x'}\n{'asin': 'B20', 'title': 'y'\n"))
    message = _fails("amazon-2014", inter, items)
    assert message.startswith(f"{items}: line 2: not a Python-literal or JSON record")


@pytest.mark.parametrize("content, problem", [(b"", "the file is empty (0 bytes)"),
                                              (gzip.compress(b"", mtime=0), "no data rows (the file holds no records)")])
def test_empty_files(tmp_path: Path, content: bytes, problem: str) -> None:
    inter, meta = rf.write_amazon_2018(tmp_path)
    inter.write_bytes(content)
    assert _fails("amazon-2018", inter, meta) == f"{inter}: {problem}"


def test_header_only_file_has_no_data_rows(tmp_path: Path) -> None:
    inter, items = rf.write_recbole(tmp_path, inter_rows=[])
    assert _fails("recbole", inter, items) == f"{inter}: no data rows (the file holds no records)"


def test_bad_input_leaves_earlier_tables_untouched(tmp_path: Path) -> None:
    con = _load("ml-1m", *rf.write_ml1m(tmp_path / "good"))
    before = (_rows(con, "raw_interactions"), _rows(con, "raw_items"))
    bad_inter, bad_items = rf.write_ml1m(tmp_path / "bad", ratings=[("9", "90", 1.0, 1)])
    bad_items.write_text("90::Title only\n", encoding="latin-1")  # the items file fails after interactions loaded
    with pytest.raises(DataError, match=r"movies\.dat: line 1: Expected Number of Columns: 3 Found: 2"):
        _load("ml-1m", bad_inter, bad_items, con=con)
    assert (_rows(con, "raw_interactions"), _rows(con, "raw_items")) == before
    assert sorted(r[0] for r in con.sql("show tables").fetchall()) == ["raw_interactions", "raw_items"]
