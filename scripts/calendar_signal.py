"""How much a history's calendar time says about the next item on a processed dataset (the
measurements behind ``model.calendar``, docs/results.md session 15): the share of test items and
of history items released in the year of the user's last input (MovieLens titles end in "(year)"),
and masked full-ranking Recall/NDCG@10 of popularity counted before the user's last input, over
all time and over the last 30 days. Protocol: leave-one-out test split, the test user's history
(train + validation items) masked, ties ranked against the target (target ranks after equals).

    python scripts/calendar_signal.py --processed-dir data/processed/ml-1m
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

DAY = 86_400


def release_years(items: pd.DataFrame, n_items: int) -> np.ndarray:
    """(N+1,) release year from a title's trailing "(YYYY)"; 0 where there is none."""
    years = np.zeros(n_items + 1, dtype=np.int64)
    for idx, title in zip(items["item_idx"], items["title"], strict=True):
        found = re.search(r"\((\d{4})\)\s*$", str(title))
        years[idx] = int(found.group(1)) if found else 0
    return years


def popularity_metrics(seq: pd.DataFrame, n_items: int, window_s: int | None) -> dict[str, float]:
    """Masked R@10 / N@10 on the test item of popularity over training items before each user's
    last input (its validation item's time), over all time (None) or the last ``window_s`` seconds."""
    items = np.concatenate([np.asarray(s) for s in seq["train_seq"]])  # (I,)
    times = np.concatenate([np.asarray(t) for t in seq["train_ts"]])  # (I,)
    order = np.argsort(times, kind="stable")
    items, times = items[order], times[order]
    hits, gains = [], []
    for history, valid, test, now in zip(seq["train_seq"], seq["valid_item_idx"], seq["test_item_idx"], seq["valid_ts"], strict=True):
        lo = 0 if window_s is None else np.searchsorted(times, now - window_s, "left")
        counts = np.bincount(items[lo:np.searchsorted(times, now, "left")], minlength=n_items + 1).astype(float)
        target = counts[test]
        counts[[0, *history, valid]] = -1.0  # padding and the user's history never rank ...
        counts[test] = target  # ... the target always does (as lite_rec/metrics.py restores it)
        rank = int((counts >= target).sum()) - 1  # items scored at least as high, the target excluded
        hits.append(rank < 10)
        gains.append(1.0 / np.log2(rank + 2) if rank < 10 else 0.0)
    return {"recall_10": float(np.mean(hits)), "ndcg_10": float(np.mean(gains))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processed-dir", type=Path, required=True, help="a dataset's processed folder (sequences + items)")
    args = parser.parse_args()
    path = args.processed_dir / "sequences.parquet"
    if not path.is_file():
        raise SystemExit(f"error: {path} does not exist: run `lite-rec ingest <dataset>` first")
    seq = pd.read_parquet(path)
    missing = [c for c in ("train_seq", "train_ts", "valid_item_idx", "valid_ts", "test_item_idx") if c not in seq.columns]
    if missing:
        raise SystemExit(f"error: {path}: no column(s) {', '.join(missing)}; re-run `lite-rec ingest <dataset>` to rewrite the file")
    items = pd.read_parquet(args.processed_dir / "items.parquet", columns=["item_idx", "title"])
    n_items = int(items["item_idx"].max())
    years = release_years(items, n_items)
    now_year = np.array([dt.datetime.fromtimestamp(int(t), dt.timezone.utc).year for t in seq["valid_ts"]])
    test_new = years[seq["test_item_idx"].to_numpy()] == now_year
    history_new = [float(np.mean(years[np.asarray(h)] == y)) for h, y in zip(seq["train_seq"], now_year, strict=True)]
    out = {}
    for year in np.unique(now_year):
        users = now_year == year
        out[f"last input in {year}"] = {"users": int(users.sum()), "test items of that year": float(test_new[users].mean()),
                                        "history items of that year (mean per user)": float(np.mean(np.asarray(history_new)[users]))}
    out["popularity before the last input, all time"] = popularity_metrics(seq, n_items, None)
    out["popularity before the last input, 30 days"] = popularity_metrics(seq, n_items, 30 * DAY)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
