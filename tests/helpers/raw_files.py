"""Writers of tiny raw files in each real dump format (layout, separators, encodings as published).

Why: MovieLens and Amazon data may not be committed (docs/design.md), so tests write a few hand-made
rows in exactly the published formats into ``tmp_path``. Every writer returns the paths it
wrote; the default rows are small enough to check results by hand.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

# (user, item, rating, timestamp) in file order; note the tie at ts=100 and a repeated pair.
RATINGS: list[tuple[str, str, float, int]] = [
    ("1", "10", 5.0, 300),
    ("1", "20", 3.0, 100),
    ("2", "10", 4.0, 100),
    ("2", "30", 1.0, 100),
    ("1", "10", 2.0, 400),
]
# (item, title, genres); titles with latin-1 characters, commas, '::'-free quotes.
MOVIES: list[tuple[str, str, list[str]]] = [
    ("10", "Café Society (1995)", ["Comedy", "Drama"]),
    ("20", 'City of Lost Children, The (1995)', ["Adventure", "Sci-Fi"]),
    ("30", '"Great Performances" Cats (1998)', ["Musical"]),
]
# The 19 genre flags of ml-100k's u.item, in the order of its u.genre file.
ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
]


def _num(value: float | str) -> str:
    """5.0 -> "5" (MovieLens writes integer ratings); strings pass through (for bad-input tests)."""
    if isinstance(value, str):
        return value
    return str(int(value)) if float(value).is_integer() else str(value)


def write_lines(path: Path, lines: Iterable[str], *, encoding: str = "utf-8", newline: str = "\n") -> Path:
    """Write text lines (each gets `newline`), creating parent directories."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("".join(line + newline for line in lines).encode(encoding))
    return path


def write_ml1m(directory: Path, ratings: Sequence = RATINGS, movies: Sequence = MOVIES) -> tuple[Path, Path]:
    """``ratings.dat`` (UserID::MovieID::Rating::Timestamp) and ``movies.dat``, latin-1."""
    d = Path(directory)
    r = write_lines(d / "ratings.dat", (f"{u}::{i}::{_num(x)}::{t}" for u, i, x, t in ratings), encoding="latin-1")
    m = write_lines(d / "movies.dat", (f"{i}::{title}::{'|'.join(g)}" for i, title, g in movies), encoding="latin-1")
    return r, m


def write_ml100k(directory: Path, ratings: Sequence = RATINGS, movies: Sequence = MOVIES) -> tuple[Path, Path]:
    """``u.data`` (tab-separated) and ``u.item`` (24 ``|`` fields, 19 genre flags), latin-1."""
    d = Path(directory)
    r = write_lines(d / "u.data", (f"{u}\t{i}\t{_num(x)}\t{t}" for u, i, x, t in ratings), encoding="latin-1")
    rows = []
    for item, title, genres in movies:
        flags = "|".join("1" if g in genres else "0" for g in ML100K_GENRES)
        rows.append(f"{item}|{title}|01-Jan-1995||http://us.imdb.com/M/title-exact?x|{flags}")
    m = write_lines(d / "u.item", rows, encoding="latin-1")
    return r, m


def write_ml_csv(directory: Path, ratings: Sequence = RATINGS, movies: Sequence = MOVIES) -> tuple[Path, Path]:
    """ml-20m/25m/latest ``ratings.csv`` and ``movies.csv`` (header, quoted titles), UTF-8."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["userId", "movieId", "rating", "timestamp"])
    w.writerows([u, i, f"{float(x):.1f}", t] for u, i, x, t in ratings)
    (d / "ratings.csv").write_text(buf.getvalue(), encoding="utf-8")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["movieId", "title", "genres"])
    w.writerows([i, title, "|".join(g) or "(no genres listed)"] for i, title, g in movies)
    (d / "movies.csv").write_text(buf.getvalue(), encoding="utf-8")
    return d / "ratings.csv", d / "movies.csv"


def write_gzip_lines(path: Path, lines: Iterable[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress("".join(line + "\n" for line in lines).encode("utf-8")))
    return path


def amazon_2018_reviews(ratings: Sequence = RATINGS) -> list[dict]:
    """Review records with the 2018 dump's field names (plus a field readers must ignore)."""
    return [
        {"overall": x, "verified": True, "reviewTime": "01 1, 2000", "reviewerID": f"A{u}", "asin": f"B{i}",
         "reviewText": "ok", "unixReviewTime": t}
        for u, i, x, t in ratings
    ]


def amazon_2018_meta(movies: Sequence = MOVIES) -> list[dict]:
    """Metadata records: `category` a list, `description` a list (first item) or a string."""
    out = []
    for n, (item, title, genres) in enumerate(movies):
        description: list[str] | str = ["First part.", "Second part."] if n == 0 else f"About {title}."
        out.append({"asin": f"B{item}", "title": title, "brand": f"Brand {item}", "category": list(genres),
                    "description": description, "price": "$1.00"})
    return out


def write_amazon_2018(directory: Path, category: str = "Toys_and_Games", reviews: Sequence[dict] | None = None,
                      meta: Sequence[dict] | None = None) -> tuple[Path, Path]:
    """``<Category>.json.gz`` and ``meta_<Category>.json.gz`` (gzipped JSON lines)."""
    d = Path(directory)
    r = write_gzip_lines(d / f"{category}.json.gz", (json.dumps(x) for x in (reviews or amazon_2018_reviews())))
    m = write_gzip_lines(d / f"meta_{category}.json.gz", (json.dumps(x) for x in (meta or amazon_2018_meta())))
    return r, m


def write_amazon_2014(directory: Path, category: str = "Toys_and_Games", ratings: Sequence = RATINGS,
                      meta: Sequence[dict] | None = None) -> tuple[Path, Path]:
    """``ratings_<Category>.csv`` (user,item,rating,timestamp; no header) and
    ``meta_<Category>.json.gz`` whose lines are Python literals (``repr`` of a dict: single quotes)."""
    d = Path(directory)
    r = write_lines(d / f"ratings_{category}.csv", (f"A{u},B{i},{float(x)},{t}" for u, i, x, t in ratings))
    if meta is None:
        meta = [
            {"asin": f"B{item}", "title": title, "price": 3.17, "salesRank": {"Toys & Games": 211836},
             "categories": [["Toys & Games", *genres], ["Toys & Games", "Gifts"]], "brand": f"Brand {item}",
             "description": f"It's {title}."}
            for item, title, genres in MOVIES
        ]
    m = write_gzip_lines(d / f"meta_{category}.json.gz", (repr(x) for x in meta))
    return r, m


RECBOLE_INTER_HEADER = ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
RECBOLE_ITEM_HEADER = ["item_id:token", "movie_title:token_seq", "release_year:token", "genre:token_seq"]


def write_recbole(directory: Path, name: str = "ml-tiny", *, inter_header: Sequence[str] = RECBOLE_INTER_HEADER,
                  inter_rows: Sequence[Sequence] | None = None, item_header: Sequence[str] = RECBOLE_ITEM_HEADER,
                  item_rows: Sequence[Sequence] | None = None, newline: str = "\r\n") -> tuple[Path, Path]:
    """``<name>.inter`` and ``<name>.item``: tab-separated, typed header, CRLF by default (as the
    registry copy of ML-1m); item ids are title strings, like that copy."""
    d = Path(directory)
    title_of = {i: t for i, t, _ in MOVIES}
    if inter_rows is None:
        inter_rows = [(f"u{u}", title_of[i], _num(x), t) for u, i, x, t in RATINGS]
    if item_rows is None:
        item_rows = [(t, t.rsplit(" (", 1)[0], t[-5:-1], " ".join(g)) for _, t, g in MOVIES]
    join = "\t".join
    r = write_lines(d / f"{name}.inter", [join(inter_header), *(join(map(str, x)) for x in inter_rows)], newline=newline)
    m = write_lines(d / f"{name}.item", [join(item_header), *(join(map(str, x)) for x in item_rows)], newline=newline)
    return r, m


def zip_directory(zip_path: Path, files: Sequence[Path], folder: str) -> Path:
    """A zip in the GroupLens layout: each file stored as ``<folder>/<file name>``."""
    zip_path = Path(zip_path)
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in files:
            zf.write(f, f"{folder}/{Path(f).name}")
    return zip_path
