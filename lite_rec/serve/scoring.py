"""Batch scoring: top-k next items for every user (or a list of users) into one Parquet file.

Why offline scoring beside the service: e-mail campaigns, home-page caches and analysts want
everyone's list at once, and a table (``user_id, rank, item_id, score``) that DuckDB, pandas or
Spark reads directly. It goes through the same :class:`~lite_rec.infer.recommender.Recommender` rules
as the service (raw ids, window, history masking, popularity fallback), on the fast path of
``lite_rec.infer.fast_path`` (CPU or CUDA), in batches of ``serve.score_batch_size`` users.

Histories are raw item ids, with each interaction's time and rating where the data has them:
the processed data (every known interaction of a user: the training sequence, then the
validation and test items) is mapped to ``item_id`` first and the model maps them to *its*
``item_idx``, so a model trained on an older snapshot still scores the users of a newer one (ids
it does not know are dropped and counted). A model that reads an input context (time gaps,
ratings, the request time: ``Recommender.context_fields``) gets each user's events and one
request time for the whole run, ``as_of`` (default: the clock when scoring starts): the lists
are what the service would have answered each user at that time.

The file is written to a temporary sibling and renamed into place: a reader never sees a
half-written file, and a failed run leaves the previous file untouched.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from lite_rec.core.config import LiteRecConfig
from lite_rec.core.errors import DataError
from lite_rec.core.io import atomic_write
from lite_rec.infer.bundle import Bundle
from lite_rec.infer.fast_path import FastPathOptions, fast_recommender
from lite_rec.infer.recommender import Recommender
from lite_rec.infer.requests import Unreadable, time_value, utc

__all__ = ["SCORES_SCHEMA", "ScoreResult", "default_scores_path", "load_histories", "read_histories", "resolve_model", "score_users"]

SCORES_SCHEMA = pa.schema([("user_id", pa.string()), ("rank", pa.int32()), ("item_id", pa.string()), ("score", pa.float64())])

ModelSource = LiteRecConfig | Bundle | Recommender | str | Path
HistorySource = LiteRecConfig | pd.DataFrame | str | Path


@dataclass(frozen=True)
class ScoreResult:
    path: Path
    users: int
    rows: int
    fallback_users: int  # users with no usable history: the popularity list
    unknown_items: int  # history items the model does not know (dropped)
    model: str  # where the model came from (models:/<name>/<version> or a path)
    seconds: float

    def summary(self) -> str:
        rate = self.users / self.seconds if self.seconds > 0 else float("inf")
        return (f"scored {self.users} users -> {self.rows} rows in {self.path} ({self.seconds:.1f} s, {rate:,.0f} users/s; "
                f"{self.fallback_users} popularity fallbacks, {self.unknown_items} unknown history items dropped; model {self.model})")


def default_scores_path(cfg: LiteRecConfig) -> Path:
    """``<data_dir>/scores/<dataset>/topk.parquet``."""
    return cfg.data_dir / "scores" / cfg.dataset.name / "topk.parquet"


# ---------------------------------------------------------------------------------------------
# Histories


def load_histories(cfg: LiteRecConfig) -> pd.DataFrame:
    """Every user of the processed data: ``user_id``, ``history`` (raw item ids, oldest first) and,
    where ``sequences.parquet`` has them, ``ts`` and ``rating`` (lists aligned with ``history``)."""
    processed = cfg.processed_dir
    for name in ("sequences.parquet", "items.parquet"):
        if not (processed / name).exists():
            raise DataError(f"{processed / name}: missing; run the data stage (lite-rec ingest) first")
    present = set(pq.read_schema(processed / "sequences.parquet").names)
    sides = {kind: [f"{split}_{kind}" for split in ("train", "valid", "test")] for kind in ("ts", "rating")}
    sides = {kind: columns for kind, columns in sides.items() if set(columns) <= present}
    columns = ["user_id", "train_seq", "valid_item_idx", "test_item_idx", *(c for cs in sides.values() for c in cs)]
    seqs = pd.read_parquet(processed / "sequences.parquet", columns=columns)
    items = pd.read_parquet(processed / "items.parquet", columns=["item_idx", "item_id"])
    lookup = np.empty(int(items["item_idx"].max()) + 1, dtype=object)
    lookup[items["item_idx"].to_numpy()] = items["item_id"].astype(str).to_numpy()
    histories = [
        lookup[np.concatenate([np.asarray(t, dtype=np.int64), [v, s]])].tolist()
        for t, v, s in zip(seqs["train_seq"], seqs["valid_item_idx"], seqs["test_item_idx"], strict=True)
    ]
    frame = pd.DataFrame({"user_id": seqs["user_id"].astype(str).to_numpy(), "history": histories})
    for kind, (train, valid, test) in sides.items():
        frame[kind] = [np.concatenate([np.asarray(t), [v, s]]).tolist()
                       for t, v, s in zip(seqs[train], seqs[valid], seqs[test], strict=True)]
    return frame


def _seconds(ts: pd.Series) -> pd.Series:
    """A log's ``ts`` column as Unix seconds: numbers as they are, datetimes (a naive one read as
    UTC) and ISO-8601 strings converted; anything else is an error naming the column."""
    if pd.api.types.is_numeric_dtype(ts) and not pd.api.types.is_bool_dtype(ts):
        return ts
    try:
        stamps = pd.to_datetime(ts, utc=True, format="ISO8601") if not pd.api.types.is_datetime64_any_dtype(ts) \
            else (ts.dt.tz_localize("UTC") if ts.dt.tz is None else ts)
    except (ValueError, TypeError) as exc:
        raise DataError(f"interaction log: column ts must hold Unix seconds, datetimes or ISO-8601 times ({exc})") from None
    if stamps.isna().any():
        raise DataError(f"interaction log: column ts has {int(stamps.isna().sum())} missing time(s)")
    return (stamps - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)


def read_histories(source: HistorySource, user_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """``user_id, history[, ts, rating]`` from a config (processed data), a frame or a Parquet file.

    A frame may hold ``user_id, history`` (lists of ids or of events ``{"item_id", "ts",
    "rating"}``, or ids with ``ts`` / ``rating`` lists beside them as the processed data gives
    them) or interactions ``user_id, item_id[, ts][, rating]`` (ordered by ``ts`` when present,
    else by row; ``ts`` in Unix seconds, datetimes or ISO-8601, ``rating`` a number, missing
    where unknown). `user_ids` keeps those users, in that order; an id that is not there
    is an error naming it.
    """
    if isinstance(source, LiteRecConfig):
        frame = load_histories(source)
    else:
        frame = pd.read_parquet(source) if isinstance(source, str | Path) else source
        if "user_id" not in frame.columns or not ({"history"} <= set(frame.columns) or {"item_id"} <= set(frame.columns)):
            raise DataError(f"histories need columns user_id + history (lists) or user_id + item_id; got {list(frame.columns)}")
        sides = [c for c in ("ts", "rating") if c in frame.columns]
        if "history" not in frame.columns:
            ordered = frame.assign(ts=_seconds(frame["ts"])).sort_values("ts", kind="stable") if "ts" in sides else frame
            grouped = ordered.groupby(ordered["user_id"].astype(str), sort=False)
            parts = {"history": grouped["item_id"].agg(lambda s: [str(i) for i in s])}
            parts.update({c: grouped[c].agg(list) for c in sides})
            frame = pd.DataFrame(parts).reset_index(names="user_id")
        frame = pd.DataFrame({"user_id": frame["user_id"].astype(str).to_numpy(), "history": frame["history"].to_numpy(),
                              **{c: frame[c].to_numpy() for c in sides}})
        bad = [u for u, h in zip(frame["user_id"], frame["history"]) if h is not None and (isinstance(h, str) or not hasattr(h, "__len__"))]
        if bad:
            raise DataError(f"history of user(s) {bad[:5]} is not a list of item ids")
    if user_ids is not None:
        wanted = [str(u) for u in user_ids]
        index = pd.Index(frame["user_id"])
        rows = index.get_indexer(wanted)
        missing = [u for u, r in zip(wanted, rows) if r < 0]
        if missing:
            raise DataError(f"{len(missing)} user id(s) not in the histories: {missing[:10]}")
        frame = frame.iloc[rows].reset_index(drop=True)
    return frame


# ---------------------------------------------------------------------------------------------
# Scoring


def resolve_model(model: LiteRecConfig | str | Path, tracking_uri: str | None = None) -> tuple[Bundle, str]:
    """A config (its registered ``champion``), a ``models:/`` URI or a bundle directory ->
    the verified bundle and where it came from (``models:/<name>/<version>`` or the path)."""
    from lite_rec.registry.client import client_for
    from lite_rec.registry.refs import parse_model_ref
    from lite_rec.registry.versions import fetch_bundle, resolve_version

    if isinstance(model, LiteRecConfig):
        from lite_rec.registry.client import resolve_tracking_uri
        from lite_rec.registry.versions import CHAMPION, registered_model_name

        tracking_uri = tracking_uri or resolve_tracking_uri(model)
        model = f"models:/{registered_model_name(model)}@{CHAMPION}"
    ref = parse_model_ref(str(model))
    client = client_for(tracking_uri) if ref.path is None else None
    return fetch_bundle(ref, resolve_version(ref, client), client)


def _recommender(model: ModelSource, device: str, options: FastPathOptions, tracking_uri: str | None) -> tuple[Recommender, str]:
    if isinstance(model, Recommender):
        return model, str(model.bundle.path)
    bundle, source = (model, str(model.path)) if isinstance(model, Bundle) else resolve_model(model, tracking_uri)
    return fast_recommender(bundle, device, options), source


def score_users(
    model: ModelSource,
    histories: HistorySource | None,
    out_path: Path | str,
    *,
    k: int = 20,
    user_ids: Sequence[str] | None = None,
    exclude_history: bool = True,
    device: str = "auto",
    batch_size: int = 512,
    progress: bool = True,
    options: FastPathOptions = FastPathOptions(),
    tracking_uri: str | None = None,
    as_of: object = None,
) -> ScoreResult:
    """Top-k of every user in `histories` (or of `user_ids`) -> Parquet ``user_id, rank, item_id, score``.

    `model`: a config (its registered ``champion``), a ``models:/`` URI, a bundle directory, a
    loaded :class:`Bundle` or a :class:`Recommender`. `histories` None means the config's
    processed data (then `model` must be a config). `as_of`: the request time of every user
    (Unix seconds, ISO-8601 with a zone or a datetime; None = now), read by a model with
    ``model.query_time`` and recorded in the file's metadata. Rank 1 is the best; a user whose
    catalog is exhausted by the mask gets fewer than k rows.
    """
    started = time.perf_counter()
    try:
        request_time = int(time.time()) if as_of is None else time_value(as_of)
    except Unreadable as exc:
        raise DataError(f"as_of: {exc}") from None
    if histories is None:
        if not isinstance(model, LiteRecConfig):
            raise DataError("score_users: pass histories (a config, frame or Parquet path) when the model is not a config")
        histories = model
    frame = read_histories(histories, user_ids)
    rec, source = _recommender(model, device, options, tracking_uri)
    if not 1 <= k <= rec.num_items:
        raise DataError(f"k must be between 1 and {rec.num_items} (the catalog size); got {k}")
    out_path = Path(out_path)
    metadata = {"lite_rec.model": source, "lite_rec.k": str(k), "lite_rec.exclude_history": json.dumps(exclude_history),
                "lite_rec.as_of": utc(request_time)}
    users = frame["user_id"].tolist()
    hists = [list(h) if h is not None else [] for h in frame["history"].tolist()]
    no_side = [None] * len(users)
    ts_lists, rating_lists = (frame[c].tolist() if c in frame.columns else no_side for c in ("ts", "rating"))
    columns = "ts" in frame.columns or "rating" in frame.columns
    rows = fallbacks = unknown = 0

    def write(tmp: str) -> None:
        nonlocal rows, fallbacks, unknown
        with pq.ParquetWriter(tmp, SCORES_SCHEMA.with_metadata(metadata)) as writer, tqdm(
            total=len(users), unit="user", desc="score", disable=not progress
        ) as bar:
            for start in range(0, len(users), batch_size):
                span = range(start, min(start + batch_size, len(users)))
                names = [f"histories[{users[u]!r}]" for u in span]  # errors name the user
                if columns:  # times and ratings beside the ids: read as columns, no event object per interaction
                    prepared = rec.prepare_columns([hists[u] for u in span], [ts_lists[u] for u in span],
                                                   [rating_lists[u] for u in span], True, [request_time] * len(span), names)
                else:
                    prepared = rec.prepare([hists[u] for u in span], True, [request_time] * len(span), names)
                batch = rec.recommend_prepared(prepared, k, exclude_history)
                table = _to_table(users[start : start + batch_size], batch)
                writer.write_table(table)
                rows += table.num_rows
                fallbacks += sum(r.fallback for r in batch)
                unknown += sum(len(r.unknown) for r in batch)
                bar.update(len(batch))

    atomic_write(out_path, write)  # a reader never sees a half-written file
    return ScoreResult(out_path, len(users), rows, fallbacks, unknown, source, time.perf_counter() - started)


def _to_table(users: list[str], results: list) -> pa.Table:
    counts = [len(r) for r in results]
    user_col = np.repeat(np.asarray(users, dtype=object), counts)
    ranks = np.concatenate([np.arange(1, n + 1, dtype=np.int32) for n in counts]) if counts else np.zeros(0, np.int32)
    return pa.table(
        {
            "user_id": pa.array(user_col.tolist(), pa.string()),
            "rank": pa.array(ranks, pa.int32()),
            "item_id": pa.array([i for r in results for i in r.item_ids], pa.string()),
            "score": pa.array([s for r in results for s in r.scores], pa.float64()),
        },
        schema=SCORES_SCHEMA,
    )
