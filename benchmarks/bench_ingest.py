"""Benchmark the data stage: wall time and peak memory of raw -> validated Parquet sequences.

Cases (each run in its own child process, so its peak RSS is its own: ``os.wait4`` rusage):
- ``ml-1m``: the real ML-1m from the cached raw files (the download is done beforehand and is
  not timed), 5-core, the whole `ingest` with ``force=True``.
- ``amazon-20m``: a generated Amazon-2018-like dump of ``--rows`` interactions (default 20M):
  ``<Category>.json.gz`` JSON lines with the real field names (reviewerID, asin, overall,
  unixReviewTime, plus verified/reviewTime/summary/reviewText so that lines are realistically
  long: ~300 bytes, still shorter than real reviews) and ``meta_<Category>.json.gz`` (asin,
  title, brand, category list, description list). DuckDB writes plain JSON lines (parallel),
  then Python gzips them at level 1 (DuckDB's own gzip writer is ~4x slower); both are cached.
  User and item popularity are heavy-tailed (power laws), so the 10-core needs several passes
  and random (user, item) collisions give duplicates to drop.

Usage::

    .venv/bin/python benchmarks/bench_ingest.py ml-1m
    .venv/bin/python benchmarks/bench_ingest.py amazon-20m --rows 20000000 --memory-limit 2GB

Prints one JSON line per case; the numbers go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CATEGORY = "Bench_Category"


def generate_amazon(directory: Path, rows: int, *, progress: bool = True) -> tuple[Path, Path]:
    """Write a deterministic Amazon-2018-like reviews dump and its metadata (gzip JSON lines)."""
    import duckdb

    directory.mkdir(parents=True, exist_ok=True)
    reviews, meta = directory / f"{CATEGORY}.json.gz", directory / f"meta_{CATEGORY}.json.gz"
    marker = directory / "generated.json"
    if marker.exists() and json.loads(marker.read_text()).get("rows") == rows and reviews.exists() and meta.exists():
        return reviews, meta
    n_users, n_items = max(rows // 12, 10), max(rows // 80, 10)
    plain = directory / f"{CATEGORY}.json.tmp"
    con = duckdb.connect()
    # u01(x, salt): a deterministic uniform in [0, 1) from a hash, so the dump is reproducible.
    con.execute(
        "create macro u01(x, salt) as (hash(x * 1000003 + salt) % 1000000007)::double / 1000000007"
    )
    started = time.perf_counter()
    con.execute(
        """
        copy (
            with draws as (
                select
                    range as n,
                    floor($n_users * pow(u01(range, 1), 2.2))::bigint as u,
                    floor($n_items * pow(u01(range, 2), 2.6))::bigint as i,
                    1 + floor(5 * u01(range, 3))::int as stars,
                    946684800 + floor(567993600 * u01(range, 4))::bigint as t
                from range($rows)
            )
            select
                stars::double as overall,
                u01(n, 5) < 0.8 as verified,
                strftime(to_timestamp(t), '%m %d, %Y') as reviewTime,
                'A' || upper(substr(md5(u::varchar), 1, 13)) as reviewerID,
                'B' || lpad(i::varchar, 9, '0') as asin,
                'Reviewer ' || u as reviewerName,
                'Review of item ' || i || ' by user ' || u || ': ' || repeat('good ', 1 + (n % 20)::int) as reviewText,
                'Summary ' || stars || ' stars' as summary,
                t as unixReviewTime
            from draws
            order by n
        ) to $path (format json)
        """,
        {"rows": rows, "n_users": n_users, "n_items": n_items, "path": str(plain)},
    )
    with open(plain, "rb") as src, gzip.open(reviews, "wb", compresslevel=1) as dst:
        shutil.copyfileobj(src, dst, 1 << 22)
    plain.unlink()
    con.execute(
        """
        copy (
            select
                'B' || lpad(range::varchar, 9, '0') as asin,
                'Product ' || range || ' deluxe edition' as title,
                'Brand ' || (range % 997) as brand,
                ['Toys & Games', 'Category ' || (range % 31)] as category,
                ['A product description for item ' || range || '.'] as description
            from range($n_items)
            order by range
        ) to $path (format json, compression gzip)
        """,
        {"n_items": n_items, "path": str(meta)},
    )
    seconds = time.perf_counter() - started
    marker.write_text(json.dumps({"rows": rows, "users": n_users, "items": n_items, "seconds": seconds}))
    if progress:
        print(f"generated {rows:,} reviews ({reviews.stat().st_size / 1e9:.2f} GB gz) in {seconds:.0f} s", file=sys.stderr)
    return reviews, meta


def _child(case: str, data_dir: Path, source: str | None, memory_limit: str) -> None:
    """Run one ingest in this (child) process and print its result as JSON."""
    started = time.perf_counter()
    from lite_rec.core.config import build_config
    from lite_rec.data.ingest import ingest

    overrides = [f"data_dir={data_dir}", f"dataset.duckdb_memory_limit={memory_limit}"]
    if case == "ml-1m":
        cfg = build_config("ml-1m", overrides)
    else:
        overrides += [f"dataset.source.path={source}", f"dataset.name={case}"]
        cfg = build_config("amazon-toys", overrides)
    result = ingest(cfg, progress=False, force=True)
    keys = ("users", "items", "interactions", "raw_interactions", "k_core_iterations", "removed_by_k_core")
    print(json.dumps({
        "ingest_s": round(result.seconds, 2),
        "process_s": round(time.perf_counter() - started, 2),
        **{k: result.stats[k] for k in keys},
    }))  # fmt: skip


def run_case(case: str, data_dir: Path, source: Path | None, memory_limit: str) -> dict:
    """Run `case` in a child process; return its JSON plus wall time and peak RSS (MiB)."""
    cmd = [sys.executable, __file__, "--child", case, "--data-dir", str(data_dir), "--memory-limit", memory_limit]
    if source is not None:
        cmd += ["--source", str(source)]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO)
    out = proc.stdout.read() if proc.stdout else ""  # until the child closes it (exits)
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, peak RSS included
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{case}: child failed with status {status}")
    result = json.loads(out.strip().splitlines()[-1])
    return {"case": case, "wall_s": round(wall, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024), **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("case", choices=["ml-1m", "amazon-20m"])
    parser.add_argument("--data-dir", type=Path, default=REPO / "data" / "bench")
    parser.add_argument("--rows", type=int, default=20_000_000)
    parser.add_argument("--memory-limit", default="2GB", help="DuckDB memory_limit (dataset.duckdb_memory_limit)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--source", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.case, args.data_dir, args.source, args.memory_limit)
        return
    source = None
    if args.case == "ml-1m":  # fetch (and cache) the raw files first: the download is not timed
        from lite_rec.core.config import build_config
        from lite_rec.data.sources import fetch_raw

        fetch_raw(build_config("ml-1m", [f"data_dir={args.data_dir}"]), progress=False)
    else:
        # Generated in a spawned process: the measured child is forked from this one, and Linux
        # counts the forked copy's resident pages in its ru_maxrss (a first run once reported the
        # generator's 7.8 GB as the ingest's peak).
        directory = args.data_dir / "generated" / f"amazon-{args.rows}"
        generator = multiprocessing.get_context("spawn").Process(target=generate_amazon, args=(directory, args.rows))
        generator.start()
        generator.join()
        if generator.exitcode != 0:
            raise SystemExit(f"generating the {args.rows}-row input failed (exit code {generator.exitcode})")
        source, _meta = generate_amazon(directory, args.rows)  # cached now: returns the paths
    result = run_case(args.case, args.data_dir, source, args.memory_limit)
    result["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(json.dumps(result))


if __name__ == "__main__":
    main()
