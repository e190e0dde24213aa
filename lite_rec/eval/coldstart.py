"""The cold-start protocol: items that training never sees, recommended from their text alone.

Why: a model with the inductive item head (``model.head=inductive``) scores an item it was not
trained on from the item LLM's vector of its text (``lite-rec add-items``). This protocol measures
how well: the newest items are removed from training entirely and enter only at test time, as
text, among the candidates of every test user.

1. **Cold items** (:func:`cold_items`): each item's first rating time is the earliest timestamp of
   any event on it (train, validation or test, every user). Items are ordered by that time, ties by
   item_idx; the last ``fraction`` of them (``round(fraction * N)``) are cold (an item without any
   event, which the data stage's k-core leaves none of, is never cold). The cut-off is the
   first rating time of the earliest cold item: every cold item was first rated at or after it,
   every warm item at or before it.
2. **Warm split** (:func:`write_warm_split`): a processed folder in the format
   ``python -m lite_rec.train.run`` reads, without any trace of the cold items. Every event on a
   cold item is removed from every user's stream (with its timestamp and rating); items are
   re-indexed 1..N_warm in their original order (``items.parquet``, ``item_map.parquet`` and the
   rows of ``vectors.safetensors`` follow). Each user's remaining events (train, validation and
   test) are split again leave-one-out: last = test, second-to-last = validation, the rest = train.
   For a user whose test item is warm that is the original test item after the original history
   without its cold events, validation = the last warm event before it; for a user whose test item
   is cold, the last warm event becomes the warm folder's test item, so the training run's own
   ``test_*`` metrics are a warm-only evaluation and never the cold-start result. Users left with
   fewer than :data:`MIN_WARM_EVENTS` warm events are dropped from the training data (listed in
   the record); their test case is still scored.
3. **Test cases** (``test_cases.parquet``): one per user, the original test item as the target and
   the request of the original split: the user's train + validation events (item, time, rating)
   *with the cold events removed too*, and the request time = the test item's time. A cold item
   enters only as a candidate, described by its text: the user's history is what the warm
   catalog knows. Users whose whole history was cold have no request and are left out (counted).
4. **Scoring**: every test case ranks every item, warm and cold, except the history items
   (masked protocol); the target's 0-based rank gives Recall@k and NDCG@k
   (:mod:`lite_rec.eval.metrics`) on three slices: cases whose target is cold, whose target is
   warm, and all. The model is scored through the serving path (``benchmarks/cold_start_eval.py``:
   its bundle, the cold items added with ``extend_bundle`` as ``lite-rec add-items`` adds them,
   the in-process Recommender). The baselines here need no model: popularity
   (:func:`popularity_ranks`, training counts of the warm folder, cold items 0) and text
   similarity (:func:`text_similarity_ranks`, cosine of each item's text vector to the mean unit
   text vector of the user's last 10 history items).

The extended catalog's order is the warm items (1..N_warm) followed by the cold items in the
order of ``cold_items.parquet`` (N_warm+1..), which is how ``extend_bundle`` appends them.
Imports neither duckdb, prefect nor mlflow: it runs on a GPU worker.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file, save_file

from lite_rec.core.errors import DataError
from lite_rec.eval.metrics import mask_history_, metrics_from_ranks, target_ranks
from lite_rec.eval.popularity import item_popularity, popularity_scores

__all__ = [
    "MIN_WARM_EVENTS", "ColdItems", "WarmSplit", "catalog_ids", "cold_items", "first_rating_times", "load_warm_split",
    "popularity_ranks", "slice_metrics", "text_similarity_ranks", "write_warm_split",
]

RECORD_FILE = "coldstart.json"
COLD_ITEMS_FILE = "cold_items.parquet"
COLD_VECTORS_FILE = "cold_vectors.safetensors"
TEST_CASES_FILE = "test_cases.parquet"
VECTORS_FILE = "vectors.safetensors"
MIN_WARM_EVENTS = 3  # train (>= 1 item), validation, test
TEXT_HISTORY = 10  # the text-similarity baseline reads the user's last 10 history items
KS = (10, 20)
NEEDED = ("user_idx", "user_id", "train_seq", "valid_item_idx", "test_item_idx", "train_ts", "valid_ts", "test_ts")
RATINGS = ("train_rating", "valid_rating", "test_rating")
SLICES = ("cold", "warm", "all")


@dataclass(frozen=True)
class ColdItems:
    """The cold items, earliest first rating first (ties by item_idx)."""

    item_idx: np.ndarray  # (M,) int64 item_idx of the processed folder they were chosen from
    first_ts: np.ndarray  # (M,) int64 first rating time of each
    cutoff: int  # first rating time of the earliest cold item (Unix seconds)
    fraction: float
    n_items: int  # items of that folder


def _utc(ts: int) -> str:
    return datetime.fromtimestamp(int(ts), tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _read_sequences(processed: Path) -> pd.DataFrame:
    path = processed / "sequences.parquet"
    if not path.is_file():
        raise DataError(f"{path}: missing; the cold-start protocol reads a processed folder (run `lite-rec ingest` first)")
    present = set(pq.read_schema(path).names)
    missing = [c for c in NEEDED if c not in present]
    if missing:
        raise DataError(f"{path}: no column(s) {', '.join(missing)}; cold items are chosen by time, so the file needs "
                        "each event's timestamp (re-run `lite-rec ingest <dataset>` to rewrite it)")
    frame = pd.read_parquet(path, columns=[*NEEDED, *(c for c in RATINGS if c in present)])
    for u, (seq, ts) in enumerate(zip(frame["train_seq"], frame["train_ts"], strict=True)):
        if len(seq) != len(ts):
            raise DataError(f"{path}: row {u} (user {frame['user_id'].iloc[u]}): {len(ts)} train_ts for {len(seq)} train_seq items")
    return frame.sort_values("user_idx", kind="stable").reset_index(drop=True)


def _read_items(processed: Path) -> pd.DataFrame:
    path = processed / "items.parquet"
    if not path.is_file():
        raise DataError(f"{path}: missing; the cold-start protocol needs the item texts")
    items = pd.read_parquet(path).sort_values("item_idx").reset_index(drop=True)
    missing = {"item_idx", "item_id", "title"} - set(items.columns)
    if missing:
        raise DataError(f"{path}: no column(s) {sorted(missing)}")
    if not np.array_equal(items["item_idx"].to_numpy(np.int64), np.arange(1, len(items) + 1)):
        raise DataError(f"{path}: item_idx must be exactly 1..{len(items)}")
    return items


def first_rating_times(sequences: pd.DataFrame, n_items: int) -> np.ndarray:
    """(N+1,) int64: each item's earliest event time over every user's train, validation and test
    events; row 0 (padding) and items without events hold the int64 maximum."""
    never = np.iinfo(np.int64).max
    first = np.full(n_items + 1, never, dtype=np.int64)
    items = np.concatenate([*(np.asarray(s, np.int64) for s in sequences["train_seq"]),
                            sequences["valid_item_idx"].to_numpy(np.int64), sequences["test_item_idx"].to_numpy(np.int64)])
    times = np.concatenate([*(np.asarray(t, np.int64) for t in sequences["train_ts"]),
                            sequences["valid_ts"].to_numpy(np.int64), sequences["test_ts"].to_numpy(np.int64)])
    if len(items) and (items.min() < 1 or items.max() > n_items):
        raise DataError(f"sequences.parquet holds item_idx outside 1..{n_items} (items.parquet's items)")
    np.minimum.at(first, items, times)
    first[0] = never
    return first


def cold_items(processed_dir: Path | str, fraction: float = 0.1) -> ColdItems:
    """The last `fraction` of the items by first rating time (ties by item_idx) and the cut-off."""
    processed = Path(processed_dir)
    if not 0.0 < fraction < 1.0:
        raise DataError(f"fraction must be between 0 and 1 (exclusive); got {fraction}")
    n_items = len(_read_items(processed))
    first = first_rating_times(_read_sequences(processed), n_items)
    rated = np.flatnonzero(first[1:] != np.iinfo(np.int64).max) + 1  # items with events (all, after the k-core)
    m = int(math.floor(fraction * len(rated) + 0.5))
    if not 1 <= m < len(rated):
        raise DataError(f"fraction {fraction} of {len(rated)} rated items is {m} cold items; choose a fraction that leaves "
                        "at least one cold and one warm item")
    chosen = rated[np.lexsort((rated, first[rated]))][-m:]  # by first time, then item_idx
    return ColdItems(item_idx=chosen.astype(np.int64), first_ts=first[chosen], cutoff=int(first[chosen[0]]),
                     fraction=float(fraction), n_items=n_items)


def _ratings_of(row: Any, rated: bool) -> np.ndarray | None:
    if not rated:
        return None
    return np.append(np.asarray(row.train_rating, np.float64), [row.valid_rating, row.test_rating])


def write_warm_split(processed_dir: Path | str, out_dir: Path | str, cold: ColdItems | np.ndarray | list[int], *,
                     item_vectors: Path | str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Write the warm processed folder, the cold items, their vectors and the test cases (module
    docstring, steps 2 and 3) to `out_dir`; returns the record also written as ``coldstart.json``.

    `cold`: :func:`cold_items`' answer, or item_idx of `processed_dir` chosen otherwise (the cut-off
    is then their earliest first rating time). `item_vectors`: the (N+1, D) item-LLM vectors of
    `processed_dir`'s items (default ``<processed_dir>/vectors.safetensors``).
    """
    processed, out = Path(processed_dir), Path(out_dir)
    if out.resolve() == processed.resolve():
        raise DataError(f"{out}: the warm split must go to another folder than {processed}")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise DataError(f"{out}: exists and is not empty (pass overwrite to replace it)")
        shutil.rmtree(out)
    items, seqs = _read_items(processed), _read_sequences(processed)
    n_items = len(items)
    vectors = _read_vectors(Path(item_vectors) if item_vectors is not None else processed / VECTORS_FILE, n_items)
    first = first_rating_times(seqs, n_items)
    idx = np.asarray(cold.item_idx if isinstance(cold, ColdItems) else cold, dtype=np.int64).reshape(-1)
    if isinstance(cold, ColdItems) and cold.n_items != n_items:
        raise DataError(f"the cold items were chosen among {cold.n_items} items; {processed} has {n_items}")
    if len(idx) == 0 or idx.min() < 1 or idx.max() > n_items or len(np.unique(idx)) != len(idx):
        raise DataError(f"cold items must be distinct item_idx in 1..{n_items}, at least one")
    if len(idx) >= n_items:
        raise DataError("every item would be cold: nothing is left to train on")
    if not isinstance(cold, ColdItems):  # chosen otherwise: ordered and cut off as cold_items would
        idx = idx[np.lexsort((idx, first[idx]))]
        cold = ColdItems(idx, first[idx], int(first[idx].min()), len(idx) / n_items, n_items)
    is_cold = np.zeros(n_items + 1, dtype=bool)
    is_cold[idx] = True
    warm_old = np.flatnonzero(~is_cold[1:]) + 1  # (N_warm,) old item_idx, new item_idx = position + 1
    new_of = np.zeros(n_items + 1, dtype=np.int64)
    new_of[warm_old] = np.arange(1, len(warm_old) + 1)
    id_of = items["item_id"].astype(str).to_numpy(dtype=object)  # row r = old item_idx r + 1
    rated = all(c in seqs.columns for c in RATINGS)

    rows, cases, dropped, no_history = [], [], [], []
    removed = 0
    for row in seqs.itertuples(index=False):
        stream = np.append(np.asarray(row.train_seq, np.int64), [row.valid_item_idx, row.test_item_idx])  # (n+2,)
        ts = np.append(np.asarray(row.train_ts, np.int64), [row.valid_ts, row.test_ts])
        rating = _ratings_of(row, rated)
        keep = ~is_cold[stream]
        removed += int((~keep[:-1]).sum())
        history = keep.copy()
        history[-1] = False  # the request: train + validation events, cold ones removed
        if history.any():
            case = {"user_id": str(row.user_id), "history_item_id": id_of[stream[history] - 1].tolist(),
                    "history_ts": ts[history].tolist(), "target_item_id": str(id_of[stream[-1] - 1]),
                    "target_ts": int(ts[-1]), "target_cold": bool(is_cold[stream[-1]])}
            if rating is not None:
                case["history_rating"] = rating[history].tolist()
            cases.append(case)
        else:
            no_history.append(str(row.user_id))
        if keep.sum() < MIN_WARM_EVENTS:
            dropped.append(str(row.user_id))
            continue
        w_items, w_ts = new_of[stream[keep]], ts[keep]
        out_row = {"user_id": str(row.user_id), "train_seq": w_items[:-2].tolist(), "valid_item_idx": int(w_items[-2]),
                   "test_item_idx": int(w_items[-1]), "train_ts": w_ts[:-2].tolist(), "valid_ts": int(w_ts[-2]),
                   "test_ts": int(w_ts[-1])}
        if rating is not None:
            w_r = rating[keep]
            out_row.update(train_rating=w_r[:-2].tolist(), valid_rating=float(w_r[-2]), test_rating=float(w_r[-1]))
        rows.append(out_row)
    if not rows:
        raise DataError(f"no user keeps {MIN_WARM_EVENTS} warm events; nothing to train on")

    out.mkdir(parents=True, exist_ok=True)
    warm_seqs = pd.DataFrame(rows)
    warm_seqs.insert(0, "user_idx", np.arange(len(warm_seqs), dtype=np.int32))
    for col in ("valid_item_idx", "test_item_idx"):
        warm_seqs[col] = warm_seqs[col].astype(np.int32)
    warm_seqs.to_parquet(out / "sequences.parquet", index=False)
    warm_seqs[["user_id", "user_idx"]].to_parquet(out / "user_map.parquet", index=False)
    warm_items = items.iloc[warm_old - 1].copy()
    warm_items["item_idx"] = np.arange(1, len(warm_old) + 1, dtype=np.int32)
    warm_items.reset_index(drop=True).to_parquet(out / "items.parquet", index=False)
    warm_items[["item_id", "item_idx"]].to_parquet(out / "item_map.parquet", index=False)
    save_file({"vectors": torch.cat([vectors[:1], vectors[torch.as_tensor(warm_old)]]).contiguous()}, str(out / VECTORS_FILE))
    cold_table = items.iloc[idx - 1].copy().reset_index(drop=True)
    cold_table["item_idx"] = idx  # of the source folder
    cold_table["first_ts"] = cold.first_ts
    cold_table.to_parquet(out / COLD_ITEMS_FILE, index=False)
    save_file({"vectors": vectors[torch.as_tensor(idx)].contiguous()}, str(out / COLD_VECTORS_FILE))
    pd.DataFrame(cases).to_parquet(out / TEST_CASES_FILE, index=False)

    n_cold_cases = sum(c["target_cold"] for c in cases)
    stats_path = processed / "stats.json"
    stats = json.loads(stats_path.read_text(encoding="utf-8")) if stats_path.is_file() else {}
    record = {
        "protocol": "cold start: the cold items are removed from training entirely and enter only as text (item-LLM "
                    "vectors) among the candidates at test time; test request = train + validation events without "
                    "cold ones, request time = the test item's time; masked full ranking over warm + cold items",
        "dataset": str(stats.get("dataset", processed.name)), "source": str(processed), "fraction": cold.fraction, "cutoff": cold.cutoff, "cutoff_utc": _utc(cold.cutoff),
        "n_items": n_items, "n_warm_items": len(warm_old), "n_cold_items": len(idx),
        "cold_events_removed_from_histories": removed,
        "users": len(seqs), "training_users": len(rows), "dropped_from_training": dropped,
        "test_cases": len(cases), "test_cases_cold_target": n_cold_cases, "test_cases_warm_target": len(cases) - n_cold_cases,
        "no_history": no_history,
        "cold_items": [{"item_id": str(id_of[i - 1]), "item_idx": int(i), "first_ts": int(t)}
                       for i, t in zip(idx, cold.first_ts, strict=True)],
    }
    (out / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    stats.update(items=len(warm_old), users=len(rows),
                 interactions=int(sum(len(s) + 2 for s in warm_seqs["train_seq"])),
                 cold_start={k: record[k] for k in ("source", "fraction", "cutoff", "cutoff_utc", "n_cold_items")})
    (out / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return record


def _read_vectors(path: Path, n_items: int) -> torch.Tensor:
    if not path.is_file():
        raise DataError(f"{path}: item-vector file not found (pass the item vectors of this processed folder)")
    tensors = load_file(str(path))
    vectors = tensors.get("vectors", next(iter(tensors.values())) if len(tensors) == 1 else None)
    if vectors is None or vectors.dim() != 2 or vectors.shape[0] != n_items + 1:
        shape = None if vectors is None else tuple(vectors.shape)
        raise DataError(f"{path}: expected one tensor 'vectors' of shape ({n_items + 1}, D) for {n_items} items; got {shape}")
    return vectors.float()


# ---------------------------------------------------------------------------------------------
# Reading a warm split back; the baselines; the slices


@dataclass(frozen=True)
class WarmSplit:
    """What :func:`write_warm_split` wrote, read back."""

    path: Path
    record: dict[str, Any]
    cases: pd.DataFrame  # test_cases.parquet, one row per test case
    items: pd.DataFrame  # the warm items.parquet
    cold: pd.DataFrame  # cold_items.parquet (extended catalog order)
    vectors: torch.Tensor  # (N_warm + M + 1, D): warm rows, then the cold rows (the extended catalog)

    @property
    def catalog(self) -> list[str]:
        """item_id of extended item_idx 1..N_warm+M (index 0 = padding is not listed)."""
        return catalog_ids(self.items, self.cold)

    @cached_property
    def histories(self) -> list[np.ndarray]:
        """Each case's history as extended item_idx, oldest first."""
        lists = [list(ids) for ids in self.cases["history_item_id"]]
        rows = pd.Index(self.catalog).get_indexer([i for ids in lists for i in ids]) + 1
        if (rows < 1).any():
            raise DataError(f"{self.path / TEST_CASES_FILE}: history item(s) outside the catalog")
        bounds = np.cumsum([0, *map(len, lists)])
        return [rows[bounds[u] : bounds[u + 1]].astype(np.int64) for u in range(len(lists))]

    def targets(self) -> np.ndarray:
        rows = pd.Index(self.catalog).get_indexer(self.cases["target_item_id"].astype(str).tolist())
        if (rows < 0).any():
            raise DataError(f"{self.path / TEST_CASES_FILE}: target item(s) outside the catalog")
        return rows.astype(np.int64) + 1

    @property
    def target_cold(self) -> np.ndarray:
        return self.cases["target_cold"].to_numpy(bool)


def catalog_ids(items: pd.DataFrame, cold: pd.DataFrame) -> list[str]:
    """The warm items by item_idx, then the cold items in file order: ``extend_bundle``'s order."""
    return [*items.sort_values("item_idx")["item_id"].astype(str), *cold["item_id"].astype(str)]


def load_warm_split(warm_dir: Path | str) -> WarmSplit:
    warm = Path(warm_dir)
    missing = [n for n in (RECORD_FILE, TEST_CASES_FILE, COLD_ITEMS_FILE, COLD_VECTORS_FILE, VECTORS_FILE, "items.parquet",
                           "sequences.parquet") if not (warm / n).is_file()]
    if missing:
        raise DataError(f"{warm}: no {', '.join(missing)}; write the folder with `cold_start_eval.py prepare` first")
    record = json.loads((warm / RECORD_FILE).read_text(encoding="utf-8"))
    items = _read_items(warm)
    cold = pd.read_parquet(warm / COLD_ITEMS_FILE)
    vectors = _read_vectors(warm / VECTORS_FILE, len(items))
    cold_vectors = load_file(str(warm / COLD_VECTORS_FILE))["vectors"].float()
    if cold_vectors.shape != (len(cold), vectors.shape[1]):
        raise DataError(f"{warm / COLD_VECTORS_FILE}: shape {tuple(cold_vectors.shape)}, expected ({len(cold)}, {vectors.shape[1]})")
    return WarmSplit(warm, record, pd.read_parquet(warm / TEST_CASES_FILE), items, cold, torch.cat([vectors, cold_vectors]))


def _ranks(scores: torch.Tensor, histories: list[np.ndarray], targets: np.ndarray) -> torch.Tensor:
    """Masked 0-based ranks (the evaluator's rule: items scored strictly higher) of a (B, N+1) score block."""
    h = torch.zeros(len(histories), max(1, max(len(x) for x in histories)), dtype=torch.long)
    for b, x in enumerate(histories):
        h[b, : len(x)] = torch.as_tensor(x)
    t = torch.as_tensor(targets, dtype=torch.long)
    mask_history_(scores, h, t)
    return target_ranks(scores, t)


def popularity_ranks(split: WarmSplit, batch_size: int = 1024) -> np.ndarray:
    """(cases,) masked ranks of the most-popular ranking: training counts of the warm folder (cold
    items 0, after every warm item with a count; ties by item_idx as in ``eval.popularity``)."""
    seqs = pd.read_parquet(split.path / "sequences.parquet", columns=["train_seq"])
    counts = item_popularity(seqs, len(split.catalog))  # cold rows have no training event: 0
    scores = popularity_scores(counts)  # (N+1,)
    histories, targets = split.histories, split.targets()
    out = [_ranks(scores[None].expand(min(batch_size, len(targets) - lo), -1).clone(), histories[lo : lo + batch_size],
                  targets[lo : lo + batch_size]) for lo in range(0, len(targets), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0, np.int64)


def text_similarity_ranks(split: WarmSplit, last: int = TEXT_HISTORY, batch_size: int = 1024) -> np.ndarray:
    """(cases,) masked ranks when every item is scored by the cosine of its item-LLM text vector to
    the mean of the unit text vectors of the user's last `last` history items."""
    unit = torch.nn.functional.normalize(split.vectors.float(), dim=1)  # (N+1, D); row 0 stays 0
    histories, targets = split.histories, split.targets()
    out = []
    for lo in range(0, len(targets), batch_size):
        block = histories[lo : lo + batch_size]
        recent = np.zeros((len(block), last), dtype=np.int64)  # (B, last), 0 = padding: a zero vector
        for b, h in enumerate(block):
            recent[b, : min(last, len(h))] = h[-last:]
        query = unit[torch.from_numpy(recent)].sum(1)  # (B, D): the mean's direction (the count does not change it)
        scores = torch.nn.functional.normalize(query, dim=1) @ unit.T  # (B, N+1)
        scores[:, 0] = float("-inf")
        out.append(_ranks(scores, block, targets[lo : lo + batch_size]))
    return torch.cat(out).numpy() if out else np.zeros(0, np.int64)


def slice_metrics(ranks: np.ndarray, target_cold: np.ndarray, ks: tuple[int, ...] = KS) -> dict[str, dict[str, float]]:
    """Recall@k / NDCG@k of the 0-based ranks (inf = not in the list) on the cold, warm and all slices."""
    ranks = np.asarray(ranks, dtype=np.float64)
    cold = np.asarray(target_cold, dtype=bool)
    if ranks.shape != cold.shape:
        raise ValueError(f"{len(ranks)} ranks for {len(cold)} cases")
    out = {}
    for name, pick in (("cold", cold), ("warm", ~cold), ("all", np.ones_like(cold))):
        r = torch.as_tensor(ranks[pick])
        out[name] = {**metrics_from_ranks(r, ks), "cases": int(pick.sum())}
    return out
