"""What a request may hold, and the errors that say what to fix: one set of rules for every caller.

The HTTP service, the MLflow pyfunc and batch scoring all hand their requests to the shared
:class:`~lite_rec.infer.recommender.Recommender`, which reads them with the functions here:

- a history entry is an item id (a string; an integer reads as its decimal string) or an event
  ``{"item_id", "ts", "rating"}``: ``ts`` in Unix seconds (an integer, a float or a string of
  digits; fractions are cut to the second, as the data stage stores them) or an ISO-8601 string
  *with* a zone (``2000-12-31T22:12:40Z``, ``...+01:00``: a time without one names no instant),
  ``rating`` a number in the model's rating levels (1..5, ``context.RATING_LEVELS``; fractions are
  rounded as training rounds them);
- ``request_time`` (the time of the prediction) takes the same time formats; when a model reads
  it and the request has none, it is the server's clock (UTC) at arrival.

A model reads some of these fields (``context.context_fields``); the fields it does not read are
accepted and never checked, the fields it reads must be there and usable: each way they are not
is its own :class:`ContextError` (``missing`` / ``unparseable`` / ``out_of_range`` /
``out_of_order`` / ``before_last_event`` / ``not_a_number`` / ``not_finite``) naming the entry,
the field and the model.

Every value quoted back is cut (:func:`echo`), so an error about a 900 KB id is not itself 900 KB.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping, Sequence

import numpy as np

from lite_rec.core.errors import LiteRecError
from lite_rec.model.context import RATING_LEVELS

__all__ = [
    "ECHO_CHARS", "ECHO_IDS", "EVENT_KEYS", "MAX_TIME", "ContextError", "RecommendError", "UnknownItems", "echo",
    "integer_values", "item_key", "number_values", "read_history", "time_value", "rating_value", "utc",
]

ECHO_CHARS = 64  # an id or value quoted in an error message is cut to this many characters
ECHO_IDS = 10  # and at most this many ids are quoted
EVENT_KEYS = ("item_id", "ts", "rating")
_EVENT_KEY_SET = frozenset(EVENT_KEYS)
MAX_TIME = 253_402_300_799  # 9999-12-31T23:59:59Z: the last second ISO-8601 writes with four digits
_SECONDS = re.compile(r"\s*[+-]?\d+(\.\d*)?\s*")  # a string of Unix seconds


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


class ContextError(RecommendError):
    """A field the model reads (``ts``, ``rating``, ``request_time``) that is missing or unusable.

    ``code`` is ``missing_context`` (the field is not there) or ``invalid_context`` (it is, but
    ``reason`` says why it cannot be read); ``detail`` says where and what to send instead,
    ``model`` names the model and ``fields`` lists every field it reads. The HTTP service answers
    it with a 422 of that code, naming the served version (:meth:`message`)."""

    def __init__(self, field: str, reason: str, detail: str, model: str, fields: Sequence[str]) -> None:
        self.code = "missing_context" if reason == "missing" else "invalid_context"
        self.field, self.reason, self.detail, self.model, self.fields = field, reason, detail, model, list(fields)
        super().__init__(self.message(model))

    def message(self, model: str) -> str:
        """The error as said about `model` (a registry version, or a bundle)."""
        return f"{self.detail} (model {model} reads {', '.join(self.fields)} besides the item ids)"


class Unreadable(ValueError):
    """A value that is not what its field takes; ``reason`` as in :class:`ContextError`."""

    def __init__(self, reason: str, text: str) -> None:
        super().__init__(text)
        self.reason = reason


def item_key(item: object) -> str:
    """A history entry's id as the id table's key: a string (valid Unicode), or an integer read as
    its decimal string; anything else is the caller's error, never a crash in the lookup."""
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


def read_history(history: Sequence[object], where: str) -> tuple[list[str], list[object], list[object]]:
    """A history's entries as (item keys, raw ``ts`` values, raw ``rating`` values), None where an
    entry has none (a plain id has neither). An event is a mapping with ``item_id`` and at most
    ``ts`` and ``rating``; `where` names the history in errors (``history``, ``histories[3]``)."""
    try:  # plain ASCII ids (the ids-only request): nothing to check, one pass in C
        plain = isinstance(history, list) and "".join(history).isascii()  # type: ignore[arg-type]
    except TypeError:  # an entry that is no string
        plain = False
    if plain:
        return list(history), [None] * len(history), [None] * len(history)  # type: ignore[arg-type]
    keys: list[str] = []
    times: list[object] = []
    ratings: list[object] = []
    for i, entry in enumerate(history):
        if type(entry) is dict and "item_id" in entry and _EVENT_KEY_SET.issuperset(entry):  # the common case, fast
            item = entry["item_id"]
            keys.append(item if type(item) is str and item.isascii() else item_key(item))
            times.append(entry.get("ts"))
            ratings.append(entry.get("rating"))
        elif isinstance(entry, Mapping):
            other = [k for k in entry if k not in EVENT_KEYS]
            if other or "item_id" not in entry:
                problem = f"has unknown field(s) {[echo(k) for k in other[:ECHO_IDS]]}" if other else "has no item_id"
                raise RecommendError(f"{where}[{i}] {problem}: an event is {{\"item_id\", \"ts\", \"rating\"}} "
                                     "(ts and rating as the model needs them), or give the plain item id")
            keys.append(item_key(entry["item_id"]))
            times.append(entry.get("ts"))
            ratings.append(entry.get("rating"))
        else:
            keys.append(entry if type(entry) is str and entry.isascii() else item_key(entry))
            times.append(None)
            ratings.append(None)
    return keys, times, ratings


def utc(seconds: int) -> str:
    """Unix seconds as ISO-8601 UTC (``2000-12-31T22:12:40Z``), for messages."""
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def time_value(value: object) -> int:
    """Unix seconds (floored) of a ``ts`` or ``request_time`` value; :class:`Unreadable` when it is
    no time (``unparseable``) or lies outside 1970-01-01 .. 9999-12-31 (``out_of_range``)."""
    seconds: float
    if isinstance(value, bool | np.bool_):
        raise Unreadable("unparseable", f"{value!r} is not a time")
    if isinstance(value, dt.datetime):  # also pandas' Timestamp
        if value.tzinfo is None or value.utcoffset() is None:
            raise Unreadable("unparseable", f"{echo(str(value))} has no zone: give one (Z or +hh:mm), or Unix seconds")
        seconds = value.timestamp()
    elif isinstance(value, int | np.integer):
        seconds = int(value)
    elif isinstance(value, float | np.floating):
        if not math.isfinite(value):
            raise Unreadable("unparseable", f"{value!r} is not a time")
        seconds = float(value)
    elif isinstance(value, str):
        if _SECONDS.fullmatch(value):
            seconds = float(value) if "." in value else int(value)
        else:
            try:
                parsed = dt.datetime.fromisoformat(value.strip())
            except ValueError:
                raise Unreadable("unparseable", f"{echo(value)!r} is not a time: give Unix seconds or ISO-8601 "
                                  "with a zone, e.g. 2000-12-31T22:12:40Z") from None
            return time_value(parsed)
    else:
        raise Unreadable("unparseable", f"{type(value).__name__} {echo(value)} is not a time: give Unix seconds or "
                          "ISO-8601 with a zone")
    if not 0 <= seconds <= MAX_TIME:
        raise Unreadable("out_of_range", f"{echo(value)} lies outside 1970-01-01 .. 9999-12-31")
    return int(math.floor(seconds))


def rating_value(value: object) -> float:
    """A ``rating`` as a float in 1..RATING_LEVELS; :class:`Unreadable` otherwise."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.integer | np.floating):
        raise Unreadable("not_a_number", f"{type(value).__name__} {echo(value)} is not a number")
    try:
        rating = float(value)
    except OverflowError:  # an integer beyond any float
        raise Unreadable("out_of_range", f"{echo(value)} lies outside the model's rating levels 1..{RATING_LEVELS}") from None
    if not math.isfinite(rating):
        raise Unreadable("not_finite", f"{rating!r} is not a finite number")
    if not 1 <= rating <= RATING_LEVELS:
        raise Unreadable("out_of_range", f"{echo(value)} lies outside the model's rating levels 1..{RATING_LEVELS}")
    return rating


def integer_values(values: Sequence[object]) -> np.ndarray | None:
    """(n,) int64 when every value is a plain integer (Python or NumPy, no bool), else None."""
    if isinstance(values, np.ndarray):
        return values.astype(np.int64, copy=False) if values.dtype.kind in "iu" else None
    if all(type(v) is int or type(v) is np.int64 for v in values):
        try:
            return np.fromiter(values, dtype=np.int64, count=len(values))  # (n,)
        except OverflowError:  # past int64: the per-value path says so
            return None
    return None


def number_values(values: Sequence[object]) -> np.ndarray | None:
    """(n,) float64 when every value is a plain int or float (Python or NumPy, no bool), else None."""
    if isinstance(values, np.ndarray):
        return values.astype(np.float64, copy=False) if values.dtype.kind in "iuf" else None
    if all(type(v) in _NUMBER_TYPES for v in values):
        try:
            return np.fromiter(values, dtype=np.float64, count=len(values))  # (n,)
        except OverflowError:  # an int too large for a float: the per-value path says so
            return None
    return None


_NUMBER_TYPES = frozenset({int, float, np.int64, np.float64, np.float32, np.int32})
