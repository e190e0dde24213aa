"""Reading a request's fields: times in every accepted format, ratings, events; the reasons each
unusable value is refused with."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from lite_rec.infer.requests import MAX_TIME, RecommendError, Unreadable, rating_value, read_history, time_value, utc

T = 978_300_760  # 2000-12-31T22:12:40Z


@pytest.mark.parametrize("value", [
    T, np.int64(T), float(T), T + 0.9, np.float64(T + 0.2), str(T), f" {T}.75 ", "2000-12-31T22:12:40Z",
    "2000-12-31T22:12:40.999+00:00", "2000-12-31T23:12:40+01:00", "2000-12-31 17:12:40-05:00",
    dt.datetime(2000, 12, 31, 22, 12, 40, tzinfo=dt.timezone.utc), pd.Timestamp(T, unit="s", tz="UTC"),
])
def test_every_time_format_reads_as_the_same_unix_second(value: object) -> None:
    assert time_value(value) == T  # fractions are cut to the second, as the data stage stores times
    assert utc(T) == "2000-12-31T22:12:40Z"


@pytest.mark.parametrize(("value", "reason"), [
    ("2000-12-31T22:12:40", "unparseable"),  # no zone: names no instant
    ("2000-12-31", "unparseable"), (dt.datetime(2000, 1, 1), "unparseable"), ("last tuesday", "unparseable"),
    ("", "unparseable"), (True, "unparseable"), (float("nan"), "unparseable"), (float("-inf"), "unparseable"),
    ([T], "unparseable"), ({"ts": T}, "unparseable"), (-1, "out_of_range"), (MAX_TIME + 1, "out_of_range"),
    (10**40, "out_of_range"), ("-5", "out_of_range"),
])
def test_what_is_no_time_is_refused_with_its_reason(value: object, reason: str) -> None:
    with pytest.raises(Unreadable) as info:
        time_value(value)
    assert info.value.reason == reason
    assert time_value(0) == 0 and time_value(MAX_TIME) == MAX_TIME  # the bounds themselves are times


def test_ratings_are_numbers_in_the_models_levels() -> None:
    assert [rating_value(v) for v in (1, 5, 3.5, np.int64(2), np.float32(4.0))] == [1.0, 5.0, 3.5, 2.0, 4.0]
    for value, reason in [(0.99, "out_of_range"), (5.01, "out_of_range"), (-3, "out_of_range"), (float("nan"), "not_finite"),
                          (float("inf"), "not_finite"), ("4", "not_a_number"), (True, "not_a_number"), (None, "not_a_number")]:
        with pytest.raises(Unreadable) as info:
            rating_value(value)
        assert info.value.reason == reason, value


def test_a_history_reads_as_ids_times_and_ratings() -> None:
    keys, ts, ratings = read_history(["a", 7, {"item_id": "b", "ts": T}, {"item_id": 9, "rating": 2}], "history")
    assert (keys, ts, ratings) == (["a", "7", "b", "9"], [None, None, T, None], [None, None, None, 2])
    with pytest.raises(RecommendError, match=r"histories\[2\]\[0\] has no item_id"):
        read_history([{"rating": 3}], "histories[2]")
    with pytest.raises(RecommendError, match=r"unknown field\(s\) \['time'\]"):
        read_history([{"item_id": "a", "time": T}], "history")
