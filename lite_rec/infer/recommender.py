"""The in-process recommender: raw item ids in, top-k (item_id, score, title) out.

Why one class that every caller shares: the MLflow pyfunc, the HTTP service, batch scoring and
promotion must all give the *same* answer for the same history, so the rules live here once:

- raw ``item_id`` strings are mapped to dense ``item_idx`` with the bundle's table; unknown ids
  are an error that names them (:class:`UnknownItems`), or are dropped with ``ignore_unknown``;
- a history longer than the model's window keeps its most recent ``max_seq_len`` items (the
  model was trained on the last items before each target);
- an empty history (or one left empty after dropping unknown ids) gets the popularity list of
  the training data, flagged ``fallback=True``: the model has no user vector to score with;
- with ``exclude_history`` every item of the *whole* history is masked before ranking, as in the
  evaluation protocol (predict from I \\ I_u); padding (item_idx 0) never ranks;
- without it, a model with a learned history logit (``model.history_logit``) gets that score
  added to every item of the whole history, as the evaluation's unmasked ranking does.

Scoring is one forward pass over the batch (right-padded to the window, like the evaluation
batches), one matmul in the head (Eq. 5), a scatter for the mask and one ``torch.topk``: no
per-user loop in torch. The evaluation code path (``lite_rec.eval.evaluate``) ranks with the same
inputs and the same mask, so both give the same top-k for the same history.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lite_rec.core.errors import DataError, LiteRecError
from lite_rec.infer.bundle import Bundle, load_bundle
from lite_rec.model.rec_llm import LiteRecModel, model_from_spec
from lite_rec.model.scoring import add_history_logit
from lite_rec.model.spec import ModelSpec

__all__ = ["FRAME_DEFAULTS", "MAX_K", "Recommendation", "RecommendError", "Recommender", "UnknownItems", "echo", "recommend_frame"]

# Defaults of the optional request columns (mlflow/signature.json documents the same).
FRAME_DEFAULTS = {"k": 10, "exclude_history": True, "ignore_unknown": False}

# The largest k any request may ask for (also capped by the catalog size): one rule for the HTTP
# service, the pyfunc and batch scoring. A top-1000 answer is already ~80 KB of JSON.
MAX_K = 1000
ECHO_CHARS = 64  # an id or value quoted in an error message is cut to this many characters
ECHO_IDS = 10  # and at most this many ids are quoted


def echo(value: object, limit: int = ECHO_CHARS) -> str:
    """`value` fit to quote in a message: a string as is, anything else as its ``repr``; cut to
    `limit` characters (with the full length said) and always encodable (a lone surrogate is
    written as its ``\\udXXX`` escape), so an error about a 900 KB id is not itself 900 KB."""
    try:
        text = value if isinstance(value, str) else repr(value)
    except (ValueError, RecursionError):  # an int beyond Python's digit limit, a structure nested too deep
        text = f"<{type(value).__name__}>"
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(text)} chars)"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class RecommendError(LiteRecError, ValueError):
    """A request the recommender cannot answer as asked (k out of range, malformed history)."""


class UnknownItems(RecommendError):
    """History item ids that the model does not know; `item_ids` lists them (first seen order)."""

    def __init__(self, item_ids: list[str]) -> None:
        self.item_ids = item_ids
        shown = ", ".join(repr(echo(i)) for i in item_ids[:ECHO_IDS]) + (" ..." if len(item_ids) > ECHO_IDS else "")
        super().__init__(f"{len(item_ids)} unknown item id(s) in the history: {shown} (pass ignore_unknown=True to drop them)")


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
        self._index = pd.Index(self.item_ids)  # item_id -> row (item_idx - 1), vectorised lookups
        pop = bundle.popularity
        total = max(int(pop["count"].sum()), 1)
        self._pop_idx = pop["item_idx"].to_numpy(dtype=np.int64)  # most popular first
        self._pop_share = (pop["count"].to_numpy(dtype=np.float64) / total).tolist()

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
    # ids -> indices

    def to_indices(self, histories: Sequence[Sequence[str]], ignore_unknown: bool = False) -> tuple[list[np.ndarray], list[list[str]]]:
        """Map raw ids to item_idx per user; returns (indices per user, unknown ids per user)."""
        for h in histories:
            if isinstance(h, str | bytes) or not isinstance(h, Sequence | np.ndarray):
                raise RecommendError(f"each history must be a list of item ids, got {type(h).__name__}: {echo(h)}")
        lengths = np.array([len(h) for h in histories], dtype=np.int64)
        flat = [_item_key(i) for h in histories for i in h]
        rows = self._index.get_indexer(flat) if flat else np.zeros(0, dtype=np.int64)  # -1 = unknown
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        out: list[np.ndarray] = []
        unknown: list[list[str]] = []
        for u in range(len(histories)):
            r = rows[bounds[u] : bounds[u + 1]]
            bad = r < 0
            unknown.append([flat[bounds[u] + j] for j in np.flatnonzero(bad)])
            out.append(r[~bad] + 1)
        if not ignore_unknown:
            seen = list(dict.fromkeys(i for ids in unknown for i in ids))
            if seen:
                raise UnknownItems(seen)
        return out, unknown

    # -----------------------------------------------------------------------------------------
    # scoring

    @torch.inference_mode()
    def score_indices(self, histories: Sequence[np.ndarray], exclude_history: bool = True) -> torch.Tensor:
        """Logits (B, N+1) for non-empty item_idx histories; masked items and padding are -inf."""
        L = self.spec.config.max_seq_len
        windows = [h[-L:] for h in histories]
        # (B, L) right-padded with 0 to the full window, exactly like the evaluation batches
        # (lite_rec.eval.evaluate.iter_eval_batches), so both paths compute bit-identical logits.
        items = torch.zeros(len(windows), L, dtype=torch.long)  # (B, L)
        for b, w in enumerate(windows):
            items[b, : len(w)] = torch.as_tensor(w, dtype=torch.long)
        logits, _ = self.model(items.to(self.device))  # (B, N+1)
        logits = logits.float()
        if not exclude_history and self.history_logit is None:
            return logits
        H = max(len(h) for h in histories)
        seen = torch.zeros(len(histories), H, dtype=torch.long)  # (B, H), 0 = padding (already -inf)
        for b, h in enumerate(histories):
            seen[b, : len(h)] = torch.as_tensor(h, dtype=torch.long)
        seen = seen.to(self.device)
        if exclude_history:
            return logits.scatter_(1, seen, float("-inf"))
        # as LiteRecModel.forward(history=...) scores them at evaluation: each item once
        return add_history_logit(logits, seen, torch.tensor(self.history_logit, device=self.device))

    def recommend(
        self,
        histories: Sequence[Sequence[str]],
        k: int,
        exclude_history: bool = True,
        ignore_unknown: bool = False,
    ) -> list[Recommendation]:
        """Top-k per user, best first; see the module docstring for the rules."""
        k = self.check_k(k)
        indices, unknown = self.to_indices(histories, ignore_unknown)
        results: list[Recommendation | None] = [None] * len(indices)
        active = [u for u, h in enumerate(indices) if len(h)]
        if active:
            logits = self.score_indices([indices[u] for u in active], exclude_history)  # (B, N+1)
            top_scores, top_idx = torch.topk(logits, k, dim=1)  # (B, k), (B, k)
            top_scores, top_idx = top_scores.cpu().numpy(), top_idx.cpu().numpy()
            for row, u in enumerate(active):
                keep = np.isfinite(top_scores[row])  # a catalog exhausted by the mask yields < k
                results[u] = Recommendation(self._rows(top_idx[row][keep], top_scores[row][keep].tolist()), False, unknown[u])
        for u, rec in enumerate(results):
            if rec is None:
                top = self._pop_idx[:k]
                results[u] = Recommendation(self._rows(top, self._pop_share[:k]), True, unknown[u])
        return results  # type: ignore[return-value]

    def _rows(self, item_idx: np.ndarray, scores: list[float]) -> list[tuple[str, float, str]]:
        r = item_idx - 1
        return list(zip(self.item_ids[r].tolist(), [float(s) for s in scores], self.titles[r].tolist(), strict=True))


def _item_key(item: object) -> str:
    """A history entry as the id table's key: a string (valid Unicode), or an integer read as its
    decimal string; anything else is the caller's error, never a crash in the lookup."""
    if isinstance(item, str):
        if not item.isascii():
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise RecommendError(f"item id {echo(item)} is not a valid Unicode string (it has a lone surrogate)") from None
        return str(item)
    if isinstance(item, int | np.integer) and not isinstance(item, bool | np.bool_):
        return str(int(item))
    raise RecommendError(f"item ids must be strings (or integers); got {type(item).__name__}: {echo(item)}")


def _column(frame: pd.DataFrame, name: str, recommender: Recommender) -> list:
    """One option column, checked as the HTTP service checks it: missing values take the default,
    k must be an integer (an integral float from a column with gaps counts), flags booleans."""
    default = FRAME_DEFAULTS[name]
    if name not in frame.columns:
        return [default] * len(frame)
    out = []
    for v in frame[name].tolist():
        if v is None or (isinstance(v, float | np.floating) and np.isnan(v)):
            out.append(default)
        elif name == "k":
            out.append(recommender.check_k(int(v) if isinstance(v, float | np.floating) and float(v).is_integer() else v))
        elif isinstance(v, bool | np.bool_):
            out.append(bool(v))
        else:
            raise RecommendError(f"{name} must be true or false; got {echo(v)}")
    return out


def recommend_frame(recommender: Recommender, frame: pd.DataFrame) -> pd.DataFrame:
    """The tabular interface (MLflow pyfunc, batch scoring): one request row -> one result row.

    Input columns: ``history`` (list of item ids), optional ``k``, ``exclude_history``,
    ``ignore_unknown`` (defaults in :data:`FRAME_DEFAULTS`). Output columns: ``item_ids``,
    ``scores``, ``titles`` (lists, best first) and ``fallback``. Rows that share their options
    are scored together, so a frame of same-k requests is one batch.
    """
    if not isinstance(frame, pd.DataFrame):
        try:
            frame = pd.DataFrame(frame)
        except (ValueError, TypeError) as exc:
            raise RecommendError(f"the input must be a table of requests (one row per user): {echo(str(exc), 200)}") from None
    if "history" not in frame.columns:
        shown = [echo(c) for c in list(frame.columns)[:ECHO_IDS]]
        raise RecommendError(f"the input needs a 'history' column (list of item ids); got {len(frame.columns)} column(s): {shown}")
    histories = frame["history"].tolist()  # lists or arrays; anything else is refused by to_indices
    options = list(zip(*(_column(frame, name, recommender) for name in ("k", "exclude_history", "ignore_unknown")), strict=True))
    results: list[Recommendation | None] = [None] * len(frame)
    for k, exclude, ignore in dict.fromkeys(options):
        rows = [r for r, o in enumerate(options) if o == (k, exclude, ignore)]
        got = recommender.recommend([histories[r] for r in rows], k, exclude, ignore)
        for r, rec in zip(rows, got):
            results[r] = rec
    return pd.DataFrame(
        {
            "item_ids": [r.item_ids for r in results],  # type: ignore[union-attr]
            "scores": [r.scores for r in results],  # type: ignore[union-attr]
            "titles": [r.titles for r in results],  # type: ignore[union-attr]
            "fallback": [r.fallback for r in results],  # type: ignore[union-attr]
        }
    )
