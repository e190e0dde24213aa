"""The in-process recommender: a history of raw item ids or events in, top-k (item_id, score, title) out.

Why one class that every caller shares: the MLflow pyfunc, the HTTP service, batch scoring and
promotion must all give the *same* answer for the same history, so the rules live here once:

- a history entry is an item id or an event ``{"item_id", "ts", "rating"}``
  (:mod:`lite_rec.infer.requests`); raw ``item_id`` strings are mapped to dense ``item_idx`` with
  the bundle's table; unknown ids are an error that names them (:class:`UnknownItems`), or are
  dropped with ``ignore_unknown`` (with their events);
- a model that reads an input context (:attr:`Recommender.context_fields`: ``ts``, ``rating``,
  ``request_time``) gets it built from the events by ``context.history_contexts``, the function
  the offline evaluation builds its contexts with, so a history sent with ``request_time`` = the
  test item's time is scored exactly as the evaluation scores it. A field it reads that is missing
  or unusable is a :class:`ContextError` naming the entry, the field and the model; fields it does
  not read are accepted and ignored (an ids-only model takes events too);
- a history longer than the model's window keeps its most recent ``max_seq_len`` items (the
  model was trained on the last items before each target);
- an empty history (or one left empty after dropping unknown ids) gets the popularity list of
  the training data, flagged ``fallback=True``: the model has no user vector to score with;
- with ``exclude_history`` every item of the *whole* history is masked before ranking, as in the
  evaluation protocol (predict from I \\ I_u); padding (item_idx 0) never ranks;
- without it, a model with a learned history logit (``model.history_logit``) gets that score
  added to every item of the whole history, as the evaluation's unmasked ranking does.

Scoring is one forward pass over the batch (right-padded to the window, like the evaluation
batches, contexts alongside), one matmul in the head (Eq. 5), a scatter for the mask and one
``torch.topk``: no per-user loop in torch. The evaluation code path (``lite_rec.eval.evaluate``) ranks with the same
inputs and the same mask, so both give the same top-k for the same history.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path

import numpy as np
import torch

from lite_rec.core.errors import DataError
from lite_rec.data.sequences import build_sequence_store
from lite_rec.infer.bundle import Bundle, load_bundle
from lite_rec.infer.requests import (
    ECHO_CHARS,
    ECHO_IDS,
    MAX_TIME,
    ContextError,
    RecommendError,
    UnknownItems,
    Unreadable,
    echo,
    integer_values,
    item_key,
    number_values,
    rating_value,
    read_history,
    time_value,
    utc,
)
from lite_rec.model.context import (
    RATING,
    RATING_LEVELS,
    REQUEST_TIME,
    TS,
    context_fields,
    history_contexts,
)
from lite_rec.model.rec_llm import LiteRecModel, model_from_spec
from lite_rec.model.scoring import add_history_logit
from lite_rec.model.spec import ModelSpec

__all__ = [
    "ECHO_CHARS", "ECHO_IDS", "MAX_K", "ContextError", "Prepared", "Recommendation", "RecommendError",
    "Recommender", "UnknownItems", "echo",
]

# The largest k any request may ask for (also capped by the catalog size): one rule for the HTTP
# service, the pyfunc and batch scoring. A top-1000 answer is already ~80 KB of JSON.
MAX_K = 1000
WARM_UP_TIME = 978_300_000  # 2000-12-31T22:00:00Z: when example_request's events start


@dataclass(frozen=True)
class Prepared:
    """One user's request, read and checked (:meth:`Recommender.prepare`), ready to score."""

    indices: np.ndarray  # (n,) item_idx of the known history items, oldest first
    unknown: list[str]  # ids dropped under ignore_unknown
    contexts: np.ndarray | None  # (n, C) context rows of those items; None for an ids-only model


@dataclass(frozen=True)
class Recommendation:
    """One user's top-k. Iterates as ``(item_id, score, title)`` tuples, best first.

    `fallback` is True when the list is the popularity fallback (no usable history); its scores
    are then the items' share of training interactions, not model logits.
    """

    items: list[tuple[str, float, str]]
    fallback: bool = False
    unknown: list[str] = field(default_factory=list)  # ids dropped under ignore_unknown

    @property
    def item_ids(self) -> list[str]:
        return [i for i, _, _ in self.items]

    @property
    def scores(self) -> list[float]:
        return [s for _, s, _ in self.items]

    @property
    def titles(self) -> list[str]:
        return [t for _, _, t in self.items]

    def __iter__(self) -> Iterator[tuple[str, float, str]]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[str, float, str]:
        return self.items[i]


class Recommender:
    """A bundle's model, id table and popularity list, ready to answer top-k requests."""

    def __init__(self, bundle: Bundle, device: str | torch.device = "cpu") -> None:
        self.bundle = bundle
        self.device = torch.device(device)
        self.spec: ModelSpec = bundle.spec
        if self.spec.n_items != bundle.num_items:
            raise DataError(f"{bundle.path}: model scores {self.spec.n_items} items, the id table has {bundle.num_items}")
        model = model_from_spec(self.spec)
        try:
            model.load_state_dict(bundle.tensors, strict=True)
        except RuntimeError as exc:
            raise DataError(f"{bundle.path}: weights do not fit the saved architecture: {exc}") from None
        self.model: LiteRecModel = model.to(self.device).eval()
        # the learned score of items the user already has (model.history_logit), added here and not in the
        # model's forward: fast paths swap the model (fast_path.fast_recommender) and score the input window only
        self.history_logit: float | None = float(model.history_logit().detach()) if self.spec.config.history_logit else None
        self.item_ids: np.ndarray = bundle.items["item_id"].to_numpy(dtype=object)  # row r = item_idx r + 1
        self.titles: np.ndarray = bundle.items["title"].to_numpy(dtype=object)
        self._row_of: dict[str, int] = {item_id: row for row, item_id in enumerate(self.item_ids)}  # item_id -> item_idx - 1
        pop = bundle.popularity
        total = max(int(pop["count"].sum()), 1)
        self._pop_idx = pop["item_idx"].to_numpy(dtype=np.int64)  # most popular first
        self._pop_share = (pop["count"].to_numpy(dtype=np.float64) / total).tolist()
        self.context_fields: list[str] = context_fields(self.spec.config)  # what a request must carry besides ids
        # how errors name the model: the bundle, unless its owner knows the registry version (the service does)
        self.version = f"bundle {bundle.fingerprint[:12]}"
        self.clock: Callable[[], float] = time.time  # the request time of a request without one

    @classmethod
    def from_path(cls, path: Path | str, device: str | torch.device = "cpu") -> "Recommender":
        return cls(load_bundle(path), device)

    @property
    def num_items(self) -> int:
        return self.bundle.num_items

    @property
    def max_seq_len(self) -> int:
        return self.spec.config.max_seq_len

    @property
    def k_limit(self) -> int:
        """The largest k a request may ask for: :data:`MAX_K` or the catalog size, the smaller."""
        return min(MAX_K, self.num_items)

    def check_k(self, k: object) -> int:
        """`k` as an int, or a :class:`RecommendError` unless it is an integer in 1..:attr:`k_limit`."""
        if isinstance(k, bool | np.bool_) or not isinstance(k, int | np.integer) or not 1 <= int(k) <= self.k_limit:
            raise RecommendError(f"k must be an integer between 1 and {self.k_limit} (at most {MAX_K} and the catalog size); got {echo(k)}")
        return int(k)

    # -----------------------------------------------------------------------------------------
    # histories -> indices (and contexts)

    @staticmethod
    def _check_lists(histories: Sequence[Sequence[object]]) -> None:
        for h in histories:
            if isinstance(h, str | bytes) or not isinstance(h, Sequence | np.ndarray):
                raise RecommendError(f"each history must be a list of item ids or events, got {type(h).__name__}: {echo(h)}")

    def _lookup(self, keys: list[list[str]], ignore_unknown: bool) -> tuple[list[np.ndarray], list[np.ndarray | slice], list[list[str]]]:
        """Per user: item_idx of the known entries, which entries are known (a mask, or ``slice(None)``
        for all), the unknown ids."""
        lengths = np.array([len(k) for k in keys], dtype=np.int64)
        flat = [i for k in keys for i in k]
        rows = np.fromiter(map(self._row_of.get, flat, repeat(-1)), dtype=np.int64, count=len(flat))  # -1 = unknown
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        if rows.size == 0 or rows.min() >= 0:  # every id known (the usual case): one split, no per-user masks
            return np.split(rows + 1, bounds[1:-1]), [slice(None)] * len(keys), [[] for _ in keys]
        out, known, unknown = [], [], []
        for u in range(len(keys)):
            r = rows[bounds[u] : bounds[u + 1]]
            ok = r >= 0
            unknown.append([flat[bounds[u] + j] for j in np.flatnonzero(~ok)])
            out.append(r[ok] + 1)
            known.append(ok)
        if not ignore_unknown:
            seen = list(dict.fromkeys(i for ids in unknown for i in ids))
            if seen:
                raise UnknownItems(seen)
        return out, known, unknown

    def to_indices(self, histories: Sequence[Sequence[object]], ignore_unknown: bool = False) -> tuple[list[np.ndarray], list[list[str]]]:
        """Map raw ids (plain or in events) to item_idx per user; returns (indices per user, unknown ids per user)."""
        self._check_lists(histories)
        keys = [read_history(h, _where(u, len(histories)))[0] for u, h in enumerate(histories)]
        indices, _, unknown = self._lookup(keys, ignore_unknown)
        return indices, unknown

    def prepare(self, histories: Sequence[Sequence[object]], ignore_unknown: bool = False,
                request_times: Sequence[object] | None = None, names: Sequence[str] | None = None) -> list[Prepared]:
        """Read and check every user's request: ids (unknown ones refused or dropped), then the
        context fields the model reads (:attr:`context_fields`), each entry's and the request's;
        `request_times` (one per user, None = the server's clock now). Raises what a request may
        be refused with (:class:`RecommendError` and its kinds); errors call each history by its
        `names` entry (default ``history`` alone, else ``histories[u]``)."""
        self._check_lists(histories)
        names = list(names) if names is not None else [_where(u, len(histories)) for u in range(len(histories))]
        return self._prepare_read([read_history(h, names[u]) for u, h in enumerate(histories)], ignore_unknown,
                                  request_times, names)

    def prepare_columns(self, item_ids: Sequence[Sequence[object]], times: Sequence[object] | None = None,
                        ratings: Sequence[object] | None = None, ignore_unknown: bool = False,
                        request_times: Sequence[object] | None = None,
                        names: Sequence[str] | None = None) -> list[Prepared]:
        """:meth:`prepare` for histories given as columns: per user the item ids, and beside them
        their times and ratings (arrays or lists aligned with the ids; None for a user, or for the
        whole column, where there are none), as a Parquet log or ``sequences.parquet`` holds them.
        The same checks and errors as events get; why apart: building and reading 200 event objects
        per user cost batch scoring more host time than the GPU step."""
        self._check_lists(item_ids)
        n = len(item_ids)
        names = list(names) if names is not None else [_where(u, n) for u in range(n)]
        read = []
        for u, ids in enumerate(item_ids):
            keys = list(ids) if all(type(i) is str for i in ids) else [item_key(i) for i in ids]
            sides = []
            for label, column in (("ts", times), ("rating", ratings)):
                values = None if column is None else column[u]
                if values is None or (isinstance(values, float) and np.isnan(values)):
                    sides.append([None] * len(keys))
                    continue
                if len(values) != len(keys):
                    raise RecommendError(f"{names[u]}: {len(keys)} item ids and {len(values)} {label} values; they must align")
                numbers = number_values(values) if label == "rating" else None
                if numbers is not None and np.isnan(numbers).any():  # a table's empty cell: a missing rating
                    values = [None if np.isnan(v) else v for v in numbers]
                sides.append(values)
            read.append((keys, sides[0], sides[1]))
        return self._prepare_read(read, ignore_unknown, request_times, names)

    def _prepare_read(self, read: list[tuple[list[str], Sequence[object], Sequence[object]]], ignore_unknown: bool,
                      request_times: Sequence[object] | None, names: list[str]) -> list[Prepared]:
        """Per user (item keys, raw ts values, raw rating values) -> :class:`Prepared`: the checks of
        :meth:`prepare`, whichever form the histories came in."""
        if request_times is not None and len(request_times) != len(read):
            raise RecommendError(f"{len(request_times)} request times for {len(read)} histories")
        indices, known, unknown = self._lookup([r[0] for r in read], ignore_unknown)
        if not self.context_fields:
            return [Prepared(i, un, None) for i, un in zip(indices, unknown, strict=True)]
        now = None
        times, ratings, queries = [], [], []
        for u, (keys, ts, rs) in enumerate(read):
            where = names[u]
            t = self._times(ts, keys, where) if TS in self.context_fields else None
            r = self._ratings(rs, keys, where) if RATING in self.context_fields else None
            if REQUEST_TIME in self.context_fields:
                value = None if request_times is None else request_times[u]
                if value is None:
                    now = int(self.clock()) if now is None else now
                    value, said = now, "request_time (none given: the server's clock)"
                else:
                    said = "request_time"
                q = self._field(value, REQUEST_TIME, said)
                if t is not None and len(t) and q < t[-1]:
                    raise self._error(REQUEST_TIME, "before_last_event",
                                      f"{said} {q} ({utc(q)}) is before the last event's ts {t[-1]} ({utc(int(t[-1]))}, "
                                      f"{where}[{len(t) - 1}]): a prediction follows the history")
                queries.append(q)
            times.append(None if t is None else t[known[u]])
            ratings.append(None if r is None else r[known[u]])
        active = [u for u, i in enumerate(indices) if len(i)]  # the others get the popularity list: no contexts
        contexts: list[np.ndarray | None] = [None] * len(indices)
        if active:
            features = self.spec.config.context_features
            table = history_contexts(
                build_sequence_store([times[u] for u in active]) if TS in self.context_fields else None,
                build_sequence_store([ratings[u] for u in active], np.float64) if RATING in self.context_fields else None,
                np.array([queries[u] for u in active], dtype=np.int64) if queries else None, **features)
            bounds = np.concatenate([[0], np.cumsum([len(indices[u]) for u in active])])
            for j, u in enumerate(active):
                contexts[u] = table[bounds[j] : bounds[j + 1]]
        return [Prepared(i, un, c) for i, un, c in zip(indices, unknown, contexts, strict=True)]

    def example_request(self, item_ids: Sequence[str], start: int = WARM_UP_TIME) -> tuple[list[object], int | None]:
        """A valid request for this model over `item_ids` (warm-up, examples): the ids as they are
        for an ids-only model, else events a minute apart from `start` (rating 3 where read) and a
        request time an hour after the last; (history, request_time)."""
        if not self.context_fields:
            return list(item_ids), None
        rated = {"rating": 3} if RATING in self.context_fields else {}
        events = [{"item_id": i, "ts": start + 60 * j, **rated} for j, i in enumerate(item_ids)]
        return events, start + 60 * len(events) + 3_600

    def _error(self, field_name: str, reason: str, detail: str) -> ContextError:
        return ContextError(field_name, reason, detail, self.version, self.context_fields)

    def _field(self, value: object, field_name: str, where: str) -> int | float:
        try:
            return rating_value(value) if field_name == RATING else time_value(value)
        except Unreadable as exc:
            raise self._error(field_name, exc.reason, f"{where}: {exc}") from None

    def _times(self, values: Sequence[object], keys: list[str], where: str) -> np.ndarray:
        """(n,) int64 Unix seconds of every entry, oldest first, or the :class:`ContextError` saying why not.

        Histories of plain integer times (what clients send, and the batch scorer's integer columns)
        are read in one vectorized pass: at 200 events a user, one value at a time cost more host
        time than the GPU step of a 1,024-user batch. Anything else, and any value that fails a
        check, takes the per-value path, which names the entry and says why."""
        fast = integer_values(values)
        if fast is not None and (not len(fast) or (fast.min() >= 0 and fast.max() <= MAX_TIME
                                                   and not (np.diff(fast) < 0).any())):
            return fast
        out = np.empty(len(values), dtype=np.int64)
        for i, v in enumerate(values):
            if v is None:
                raise self._error(TS, "missing", f"{where}[{i}] (item {echo(keys[i])!r}) has no ts: send each history "
                                  'item as an event {"item_id", "ts"' + (', "rating"' if RATING in self.context_fields else "") + "}")
            out[i] = self._field(v, TS, f"{where}[{i}].ts")
            if i and out[i] < out[i - 1]:
                raise self._error(TS, "out_of_order", f"{where}[{i}].ts {out[i]} ({utc(int(out[i]))}) is before "
                                  f"{where}[{i - 1}].ts {out[i - 1]} ({utc(int(out[i - 1]))}): send the history oldest first")
        return out

    def _ratings(self, values: Sequence[object], keys: list[str], where: str) -> np.ndarray:
        """(n,) float64 ratings in 1..5, vectorized for plain int/float values as :meth:`_times` is."""
        fast = number_values(values)
        if fast is not None and (not len(fast) or (np.isfinite(fast).all() and fast.min() >= 1
                                                   and fast.max() <= RATING_LEVELS)):
            return fast
        out = np.empty(len(values), dtype=np.float64)
        for i, v in enumerate(values):
            if v is None:
                raise self._error(RATING, "missing", f"{where}[{i}] (item {echo(keys[i])!r}) has no rating: send the "
                                  "rating the user gave each history item")
            out[i] = self._field(v, RATING, f"{where}[{i}].rating")
        return out

    # -----------------------------------------------------------------------------------------
    # scoring

    @torch.inference_mode()
    def score_indices(self, histories: Sequence[np.ndarray], exclude_history: bool = True,
                      contexts: Sequence[np.ndarray] | None = None) -> torch.Tensor:
        """Logits (B, N+1) for non-empty item_idx histories (and their (n, C) context rows, for a
        model that reads them); masked items and padding are -inf."""
        L = self.spec.config.max_seq_len
        # (B, L) right-padded with 0 to the full window, exactly like the evaluation batches
        # (lite_rec.eval.evaluate.iter_eval_batches), so both paths compute bit-identical logits;
        # the contexts likewise (B, L, C), with zero rows where the evaluation's padding gathers them
        items = torch.from_numpy(right_padded(histories, L))  # (B, L)
        extra = {}
        if self.spec.config.uses_context:
            if contexts is None:
                raise RecommendError(f"this model reads {', '.join(self.context_fields)}: score prepared requests (prepare)")
            extra["contexts"] = torch.from_numpy(right_padded(contexts, L)).to(self.device)  # (B, L, C)
        logits, _ = self.model(items.to(self.device), **extra)  # (B, N+1)
        logits = logits.float()
        if not exclude_history and self.history_logit is None:
            return logits
        seen = torch.from_numpy(right_padded(histories, max(len(h) for h in histories), keep_last=False))  # (B, H), 0 = padding
        seen = seen.to(self.device)
        if exclude_history:
            return logits.scatter_(1, seen, float("-inf"))
        # as LiteRecModel.forward(history=...) scores them at evaluation: each item once
        return add_history_logit(logits, seen, torch.tensor(self.history_logit, device=self.device))

    def recommend(
        self,
        histories: Sequence[Sequence[object]],
        k: int,
        exclude_history: bool = True,
        ignore_unknown: bool = False,
        request_times: Sequence[object] | None = None,
        names: Sequence[str] | None = None,
    ) -> list[Recommendation]:
        """Top-k per user, best first; see the module docstring for the rules. `request_times`:
        one per user (Unix seconds or ISO-8601 with a zone; None = now), read by a model with
        ``model.query_time``; `names`: how errors call each history (:meth:`prepare`)."""
        k = self.check_k(k)
        return self.recommend_prepared(self.prepare(histories, ignore_unknown, request_times, names), k, exclude_history)

    def recommend_prepared(self, prepared: Sequence[Prepared], k: int, exclude_history: bool = True) -> list[Recommendation]:
        """Top-k of requests :meth:`prepare` has read (the micro-batcher checks each alone, then scores them together)."""
        k = self.check_k(k)
        results: list[Recommendation | None] = [None] * len(prepared)
        active = [u for u, p in enumerate(prepared) if len(p.indices)]
        if active:
            contexts = [prepared[u].contexts for u in active] if self.spec.config.uses_context else None
            logits = self.score_indices([prepared[u].indices for u in active], exclude_history, contexts)  # (B, N+1)
            top_scores, top_idx = torch.topk(logits, k, dim=1)  # (B, k), (B, k)
            top_scores, top_idx = top_scores.cpu().numpy(), top_idx.cpu().numpy()
            # the whole batch's ids, titles and scores as Python objects in three calls, not three per user
            ids, titles = self.item_ids[top_idx - 1].tolist(), self.titles[top_idx - 1].tolist()
            scores, finite = top_scores.tolist(), np.isfinite(top_scores)
            whole = finite.all(1)  # a catalog exhausted by the mask yields < k: -inf past its end
            for row, u in enumerate(active):
                n = k if whole[row] else int(finite[row].sum())
                results[u] = Recommendation(list(zip(ids[row][:n], scores[row][:n], titles[row][:n], strict=True)), False,
                                            prepared[u].unknown)
        for u, rec in enumerate(results):
            if rec is None:
                top = self._pop_idx[:k]
                results[u] = Recommendation(self._rows(top, self._pop_share[:k]), True, prepared[u].unknown)
        return results  # type: ignore[return-value]

    def _rows(self, item_idx: np.ndarray, scores: list[float]) -> list[tuple[str, float, str]]:
        r = item_idx - 1
        return list(zip(self.item_ids[r].tolist(), [float(s) for s in scores], self.titles[r].tolist(), strict=True))


def right_padded(rows: Sequence[np.ndarray], width: int, keep_last: bool = True) -> np.ndarray:
    """(B, width[, C]) int64: row b holds ``rows[b]`` (n_b entries, or (n_b, C) context rows), its last
    ``width`` entries when ``keep_last`` (else it must fit), then zeros: the evaluation's right padding,
    filled with one scatter instead of a copy per row."""
    windows = [r[-width:] for r in rows] if keep_last else list(rows)
    lengths = np.fromiter(map(len, windows), dtype=np.int64, count=len(windows))
    first = np.asarray(windows[0]) if windows else np.zeros(0)
    out = np.zeros((len(windows), width, *first.shape[1:]), dtype=np.int64)
    if lengths.sum():
        flat = np.concatenate(windows)  # (sum n_b[, C])
        row = np.repeat(np.arange(len(windows)), lengths)
        col = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        out[row, col] = flat
    return out


def _where(u: int, n: int) -> str:
    """How errors name user `u` of `n`: ``history`` for a lone one, else ``histories[u]``."""
    return "history" if n == 1 else f"histories[{u}]"
