"""The most-popular baseline: training counts, deterministic tie-break, same protocol."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from lite_rec.eval.popularity import evaluate_popularity, item_popularity, popularity_scores

SEQUENCES = pd.DataFrame({
    "user_idx": [0, 1, 2],
    "train_seq": [[1, 2, 3], [2, 3], [3, 4, 1]],
    "valid_item_idx": [5, 1, 2],
    "test_item_idx": [6, 4, 6],
})


def test_popularity_counts_training_interactions_only() -> None:
    # valid/test items (5, 6 and the second 1, 2) are not counted
    assert item_popularity(SEQUENCES, 6).tolist() == [0, 2, 2, 3, 1, 0, 0]


def test_ties_break_towards_the_smaller_item_idx() -> None:
    scores = popularity_scores(item_popularity(SEQUENCES, 6))
    assert scores[1:].argsort(descending=True).add(1).tolist() == [3, 1, 2, 4, 5, 6]
    assert scores[0].item() == float("-inf")


def test_popularity_metrics_match_hand_computation() -> None:
    m = evaluate_popularity(SEQUENCES, 6, ks=(1, 2), progress=False)
    # ranking 3 > 1 > 2 > 4 > 5 > 6. Validation, history masked: user 0 (saw 1, 2, 3) target 5 is
    # beaten by 4 -> rank 1; user 1 (saw 2, 3) target 1 -> rank 0; user 2 (saw 3, 4, 1) target 2 -> 0
    assert m["valid_recall_1"] == pytest.approx(2 / 3)
    assert m["valid_ndcg_2"] == pytest.approx((2 + 1 / math.log2(3)) / 3)
    # unmasked ranks 4, 1, 2
    assert m["valid_unmasked_recall_1"] == 0.0
    assert m["valid_unmasked_recall_2"] == pytest.approx(1 / 3)
    assert m["valid_unmasked_ndcg_2"] == pytest.approx((1 / math.log2(3)) / 3)
    # test, masked: user 0 (1, 2, 3, 5) target 6 -> rank 1; user 1 (2, 3, 1) target 4 -> 0;
    # user 2 (3, 4, 1, 2) target 6 -> beaten by 5 -> 1
    assert m["test_recall_1"] == pytest.approx(1 / 3)
    assert m["test_recall_2"] == 1.0
    assert m["test_ndcg_2"] == pytest.approx((1 + 2 / math.log2(3)) / 3)
    assert m["test_unmasked_recall_2"] == 0.0  # ranks 5, 3, 5
