"""The tabular interface to the :class:`~lite_rec.infer.recommender.Recommender` (the MLflow pyfunc):
one request row in, one result row out, with the HTTP service's checks and defaults.

Why apart from the recommender: a table's missing cells (NaN, NaT) and its option columns need
reading rules of their own; the requests themselves go through ``Recommender.prepare``, so the
pyfunc, the HTTP service and batch scoring answer alike.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lite_rec.infer.recommender import Recommendation, Recommender
from lite_rec.infer.requests import ECHO_IDS, RecommendError, echo

__all__ = ["FRAME_DEFAULTS", "recommend_frame"]

# Defaults of the optional request columns (mlflow/signature.json documents the same; a missing
# request_time is the server's clock when the model reads it).
FRAME_DEFAULTS = {"k": 10, "exclude_history": True, "ignore_unknown": False, "request_time": None}


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


def _request_times(frame: pd.DataFrame) -> list[object]:
    """The ``request_time`` column (None where a row has none: the server's clock)."""
    if "request_time" not in frame.columns:
        return [None] * len(frame)
    return [None if v is None or v is pd.NaT or (isinstance(v, float | np.floating) and np.isnan(v)) else v
            for v in frame["request_time"].tolist()]


def recommend_frame(recommender: Recommender, frame: pd.DataFrame) -> pd.DataFrame:
    """The tabular interface (MLflow pyfunc, batch scoring): one request row -> one result row.

    Input columns: ``history`` (list of item ids or events ``{"item_id", "ts", "rating"}``),
    optional ``k``, ``exclude_history``, ``ignore_unknown``, ``request_time`` (defaults in
    :data:`FRAME_DEFAULTS`). Output columns: ``item_ids``, ``scores``, ``titles`` (lists, best
    first) and ``fallback``. Rows that share their options are scored together, so a frame of
    same-k requests is one batch; errors name the row (``histories[r]``).
    """
    if not isinstance(frame, pd.DataFrame):
        try:
            frame = pd.DataFrame(frame)
        except (ValueError, TypeError) as exc:
            raise RecommendError(f"the input must be a table of requests (one row per user): {echo(str(exc), 200)}") from None
    if "history" not in frame.columns:
        shown = [echo(c) for c in list(frame.columns)[:ECHO_IDS]]
        raise RecommendError(f"the input needs a 'history' column (list of item ids); got {len(frame.columns)} column(s): {shown}")
    histories = frame["history"].tolist()  # lists or arrays; anything else is refused by prepare
    times = _request_times(frame)
    options = list(zip(*(_column(frame, name, recommender) for name in ("k", "exclude_history", "ignore_unknown")), strict=True))
    results: list[Recommendation | None] = [None] * len(frame)
    for k, exclude, ignore in dict.fromkeys(options):
        rows = [r for r, o in enumerate(options) if o == (k, exclude, ignore)]
        prepared = recommender.prepare([histories[r] for r in rows], ignore, [times[r] for r in rows],
                                       names=[f"histories[{r}]" if len(frame) > 1 else "history" for r in rows])
        got = recommender.recommend_prepared(prepared, k, exclude)
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
