"""Full-ranking evaluation: inputs, histories, both protocols, batch-size independence."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from lite_rec.eval.evaluate import build_eval_set, ensemble_scorer, evaluate_model, evaluate_scores, iter_eval_batches
from lite_rec.model.rec_llm import build_model
from lite_rec.model.spec import ModelConfig

SEQUENCES = pd.DataFrame({
    "user_idx": [0, 1],
    "train_seq": [[1, 2, 3], [2]],
    "valid_item_idx": [4, 3],
    "test_item_idx": [5, 1],
})
FIXED = torch.tensor([float("-inf"), 0.5, 0.4, 0.3, 0.2, 0.1])  # item 1 best ... item 5 worst


def test_validation_predicts_from_train_and_test_from_train_plus_valid() -> None:
    valid, test = build_eval_set(SEQUENCES, "valid"), build_eval_set(SEQUENCES, "test")
    assert valid.targets.tolist() == [4, 3] and test.targets.tolist() == [5, 1]
    assert valid.histories.flat.tolist() == [1, 2, 3, 2]
    assert test.histories.flat.tolist() == [1, 2, 3, 4, 2, 3]
    with pytest.raises(ValueError, match="split"):
        build_eval_set(SEQUENCES, "train")


def test_batches_hold_the_last_items_as_input_and_the_whole_history_for_masking() -> None:
    [(inputs, history, targets, _)] = list(iter_eval_batches(build_eval_set(SEQUENCES, "test"), 2, 8, "cpu"))
    assert inputs.tolist() == [[3, 4], [2, 3]]
    assert history.tolist() == [[1, 2, 3, 4], [2, 3, 0, 0]]
    assert targets.tolist() == [5, 1]


def _fixed_scorer(seen: list[list[list[int]]]):
    def score(inputs: torch.Tensor) -> torch.Tensor:
        seen.append(inputs.tolist())
        return FIXED.expand(inputs.shape[0], -1).clone()

    return score


def test_metrics_under_both_protocols_match_hand_computation() -> None:
    seen: list[list[list[int]]] = []
    m = evaluate_scores(_fixed_scorer(seen), build_eval_set(SEQUENCES, "valid"), max_len=2, ks=(1, 3),
                        exclude_history=True, progress=False)
    assert seen == [[[2, 3], [2, 0]]]
    # unmasked ranks: user 0 target 4 is beaten by 1, 2, 3 -> 3; user 1 target 3 by 1, 2 -> 2
    assert m["valid_unmasked_recall_1"] == 0.0 and m["valid_unmasked_recall_3"] == 0.5
    assert m["valid_unmasked_ndcg_3"] == pytest.approx(0.5 / math.log2(4))
    # masked: user 0 saw 1, 2, 3 -> rank 0; user 1 saw 2 -> only 1 beats 3 -> rank 1
    assert m["valid_masked_recall_1"] == 0.5 and m["valid_masked_ndcg_1"] == 0.5
    assert m["valid_masked_recall_3"] == 1.0
    assert m["valid_masked_ndcg_3"] == pytest.approx((1 + 1 / math.log2(3)) / 2)
    assert m["valid_recall_3"] == m["valid_masked_recall_3"]  # the configured protocol
    assert m["valid_users"] == 2.0 and m["valid_target_in_history"] == 0.0
    plain = evaluate_scores(_fixed_scorer([]), build_eval_set(SEQUENCES, "valid"), max_len=2, ks=(1, 3),
                            exclude_history=False, progress=False)
    assert plain["valid_recall_3"] == plain["valid_unmasked_recall_3"] == 0.5


def _tiny_model():
    torch.manual_seed(0)
    vectors = torch.randn(6, 8)
    vectors[0] = 0
    cfg = ModelConfig(backbone="lean", pretrained=False, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_seq_len=2)
    return build_model(cfg, 5, vectors, causal=False)[0]


def test_evaluation_does_not_depend_on_the_batch_size_and_restores_train_mode() -> None:
    model = _tiny_model().train()
    test = build_eval_set(SEQUENCES, "test")
    one = evaluate_model(model, test, ks=(1, 2, 5), batch_size=1, progress=False)
    assert model.training
    many = evaluate_model(model, test, ks=(1, 2, 5), batch_size=64, progress=False)
    assert one == many
    assert one["test_masked_recall_5"] == 1.0  # with history masked, 5 - |history| items remain


def test_ensemble_averages_normalised_scores_not_raw_logits() -> None:
    inputs = torch.tensor([[1, 2]])
    # model a is sure of item 1 with huge logits; model b mildly prefers item 2 at a small scale
    a = lambda items: torch.tensor([[float("-inf"), 100.0, 0.0, 0.0]])  # noqa: E731
    b = lambda items: torch.tensor([[float("-inf"), 0.0, 2.0, 1.0]])  # noqa: E731
    logp = [torch.log_softmax(f(inputs), -1) for f in (a, b)]
    by_hand = (logp[0] + logp[1]) / 2
    got = ensemble_scorer([a, b], "logprob")(inputs)
    torch.testing.assert_close(got[:, 1:], by_hand[:, 1:])
    assert torch.isneginf(got[:, 0]).all()
    prob = ensemble_scorer([a, b], "prob")(inputs)
    torch.testing.assert_close(prob[:, 1:], ((logp[0].exp() + logp[1].exp()) / 2)[:, 1:])
    assert torch.isneginf(prob[:, 0]).all()  # padding is 0 probability, still never recommended
    assert prob[0, 1:].sum().item() == pytest.approx(1.0)
    alone = ensemble_scorer([b])(inputs)  # one member ranks as the member does
    assert alone[0, 1:].argsort().tolist() == b(inputs)[0, 1:].argsort().tolist()
    with pytest.raises(ValueError, match="at least one"):
        ensemble_scorer([])
    with pytest.raises(ValueError, match="combine must be one of"):
        ensemble_scorer([a], "mean")
