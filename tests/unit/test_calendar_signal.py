"""scripts/calendar_signal.py: release years from titles and time-windowed popularity, by hand."""

from __future__ import annotations

import importlib.util
import math
from types import ModuleType

import numpy as np
import pandas as pd
import pytest

from lite_rec.config import REPO_ROOT


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("calendar_signal", REPO_ROOT / "scripts" / "calendar_signal.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_release_years_come_from_a_trailing_year_only() -> None:
    items = pd.DataFrame({"item_idx": [1, 2, 3], "title": ["Toy Story (1995)", "1984 (Nineteen Eighty-Four)", "Heat (1995) "]})
    assert _script().release_years(items, 3).tolist() == [0, 1995, 0, 1995]


def test_popularity_counts_only_before_the_last_input_and_inside_the_window() -> None:
    # training items by time: 5@10, 5@20, 4@30, 3@40, 1@5,000,000
    seq = pd.DataFrame({"train_seq": [[5, 5, 1], [4, 3]], "train_ts": [[10, 20, 5_000_000], [30, 40]],
                        "valid_item_idx": [2, 1], "valid_ts": [5_000_001, 4_000_000], "test_item_idx": [4, 5]})
    script = _script()
    # all time: user 0 sees 3 and 4 once each (5, 1, 2 are its own): target 4 ties with 3 -> rank 1;
    # user 1 sees 5 twice, 2 never: rank 0
    every = script.popularity_metrics(seq, 5, None)
    assert every["recall_10"] == 1.0 and math.isclose(every["ndcg_10"], (1 / np.log2(3) + 1.0) / 2)
    # 30 days: user 0 counts only item 1 (its own), user 1 nothing: both targets tie with one other item
    recent = script.popularity_metrics(seq, 5, 30 * 86_400)
    assert math.isclose(recent["ndcg_10"], 1 / np.log2(3))


def test_a_file_without_timestamps_is_refused_by_name(tmp_path, monkeypatch) -> None:
    pd.DataFrame({"train_seq": [[1]], "valid_item_idx": [2], "test_item_idx": [3]}).to_parquet(tmp_path / "sequences.parquet")
    monkeypatch.setattr("sys.argv", ["calendar_signal.py", "--processed-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"sequences.parquet: no column\(s\) train_ts, valid_ts; re-run"):
        _script().main()
