"""Ranks, Recall@k, NDCG@k and history masking on hand-computed examples."""

from __future__ import annotations

import math

import pytest
import torch

from lite_rec.eval.metrics import RankAccumulator, mask_history_, metrics_from_ranks, target_ranks

NEG_INF = float("-inf")


def _scores() -> torch.Tensor:
    # item_idx:        0       1    2    3    4
    return torch.tensor([[NEG_INF, 0.1, 0.9, 0.5, 0.3],
                         [NEG_INF, 0.8, 0.2, 0.4, 0.6]])


def test_rank_counts_items_scored_strictly_higher() -> None:
    # user 0: target 3 (0.5) is beaten by item 2 (0.9) -> rank 1
    # user 1: target 2 (0.2) is beaten by items 1, 3, 4 -> rank 3
    assert target_ranks(_scores(), torch.tensor([3, 2])).tolist() == [1, 3]


def test_ties_do_not_push_the_target_down() -> None:
    scores = torch.tensor([[NEG_INF, 0.5, 0.5, 0.7]])
    assert target_ranks(scores, torch.tensor([2])).tolist() == [1]  # only item 3 is strictly higher


def test_recall_and_ndcg_from_ranks_match_hand_computation() -> None:
    m = metrics_from_ranks(torch.tensor([1, 3]), ks=(1, 2, 4))
    assert m["recall_1"] == 0.0
    assert m["recall_2"] == 0.5
    assert m["recall_4"] == 1.0
    assert m["ndcg_1"] == 0.0
    assert m["ndcg_2"] == pytest.approx((1 / math.log2(3)) / 2, abs=1e-12)  # 0.31546...
    assert m["ndcg_4"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / 2, abs=1e-12)
    assert m["ndcg_4"] == pytest.approx(0.5308032, abs=1e-6)  # (0.6309298 + 0.4306766) / 2


def test_rank_zero_has_full_gain() -> None:
    assert metrics_from_ranks(torch.tensor([0]), ks=(10,)) == {"recall_10": 1.0, "ndcg_10": 1.0}


def test_history_mask_removes_seen_items_before_ranking() -> None:
    scores = _scores()
    history = torch.tensor([[2, 0, 0],  # user 0 saw item 2 (the one that beat the target)
                            [1, 4, 0]])  # user 1 saw items 1 and 4
    n_in_history = mask_history_(scores, history, torch.tensor([3, 2]))
    assert n_in_history == 0
    assert scores[0].tolist() == pytest.approx([NEG_INF, 0.1, NEG_INF, 0.5, 0.3])
    assert scores[1, 1].item() == NEG_INF and scores[1, 4].item() == NEG_INF
    # user 0: nothing beats 0.5 any more -> rank 0; user 1: only item 3 (0.4) beats 0.2 -> rank 1
    assert target_ranks(scores, torch.tensor([3, 2])).tolist() == [0, 1]


def test_target_found_in_its_history_keeps_its_score_and_is_counted() -> None:
    scores = _scores()
    n_in_history = mask_history_(scores, torch.tensor([[3, 2], [0, 0]]), torch.tensor([3, 2]))
    assert n_in_history == 1
    assert scores[0, 3].item() == 0.5  # the target is never masked
    assert scores[0, 2].item() == NEG_INF


def test_accumulator_reports_both_protocols_from_one_scoring() -> None:
    plain, masked = RankAccumulator(), RankAccumulator()
    scores, targets = _scores(), torch.tensor([3, 2])
    plain.add(scores, targets)
    masked.add(scores, targets, torch.tensor([[2, 0], [1, 4]]))
    assert plain.ranks.tolist() == [1, 3]
    assert masked.ranks.tolist() == [0, 1]
    assert masked.result((1,)) == {"recall_1": 0.5, "ndcg_1": 0.5}
    assert plain.result((1,)) == {"recall_1": 0.0, "ndcg_1": 0.0}
