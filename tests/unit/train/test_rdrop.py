"""R-Drop (train.rdrop_weight): the symmetric KL by hand, and how train_step wires it."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from lite_rec.core.config import ModelConfig
from lite_rec.model.rec_llm import IGNORE_INDEX, build_model
from lite_rec.train.rdrop import symmetric_kl, twice
from lite_rec.train.trainer import make_optimizer, make_scheduler, train_step
from tests.unit.train.test_run import _cfg, tiny_sequences, tiny_vectors, train_model

INF = float("inf")


def test_symmetric_kl_of_hand_computed_distributions() -> None:
    # p = (1/4, 3/4), q = (1/2, 1/2): KL(p||q) + KL(q||p) = sum (p - q)(ln p - ln q) = 1/4 ln 2 + 1/4 ln 1.5
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])  # (2B, N+1), B = 1
    expected = 0.5 * (0.25 * math.log(2.0) + 0.25 * math.log(1.5))
    assert math.isclose(float(symmetric_kl(logits, torch.tensor([True]))), expected, rel_tol=1e-6)
    same = torch.tensor([[1.0, 2.0, -3.0], [1.0, 2.0, -3.0]])
    assert float(symmetric_kl(same, torch.tensor([True]))) == 0.0


def test_symmetric_kl_skips_unsupervised_positions_and_left_out_items() -> None:
    # (2B, L, N+1) with B = 1, L = 2: position 1 carries no loss; column 0 is -inf in both passes (padding)
    logits = torch.tensor([[[-INF, 0.0, math.log(3.0)], [-INF, 5.0, -5.0]],
                           [[-INF, 0.0, 0.0], [-INF, -5.0, 5.0]]])
    got = symmetric_kl(logits, torch.tensor([[True, False]]))
    assert torch.isfinite(got) and math.isclose(float(got), 0.5 * 0.25 * math.log(3.0), rel_tol=1e-5)
    assert twice(None) is None and twice(torch.tensor([[1, 2]])).tolist() == [[1, 2], [1, 2]]


def _step(dropout: float, rdrop_weight: float, wrap=None) -> tuple[float, torch.Tensor]:
    """One train_step (lr 0) of a tiny causal model from a fixed start: (loss, the head's gradient).
    ``wrap(model)``: the forward function train_step calls (the model itself by default)."""
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="lean", pretrained=False, d_model=16, n_layers=1, n_heads=2, d_ff=32, dropout=dropout,
                      backbone_dropout=0.0, item_repr="id", max_seq_len=4)
    model, _ = build_model(cfg, 6, None, causal=True)
    model.train()
    optimizer = make_optimizer(model, lr=0.0, weight_decay=0.0, eps=1e-8, device=torch.device("cpu"))
    scheduler = make_scheduler(optimizer, total_steps=1, warmup_ratio=0.0, schedule="constant")
    items = torch.tensor([[1, 2, 3, 0], [4, 5, 6, 2]])  # (B, L)
    targets = torch.tensor([[2, 3, IGNORE_INDEX, IGNORE_INDEX], [5, 6, 2, 1]])
    loss = train_step(wrap(model) if wrap else model, model, optimizer, scheduler, items, targets, grad_clip=1e9,
                      bf16=False, rdrop_weight=rdrop_weight)
    return float(loss), model.head.weight.grad.clone()


def test_without_dropout_both_passes_agree_and_rdrop_changes_nothing() -> None:
    plain_loss, plain_grad = _step(dropout=0.0, rdrop_weight=0.0)
    loss, grad = _step(dropout=0.0, rdrop_weight=5.0)
    assert math.isclose(loss, plain_loss, rel_tol=1e-6)  # the doubled batch's mean CE is the batch's
    torch.testing.assert_close(grad, plain_grad)


def test_with_dropout_the_loss_is_both_passes_cross_entropy_plus_the_weighted_kl() -> None:
    calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def recording(model):
        def forward(items, targets, **kw):
            logits, ce = model(items, targets, **kw)
            calls.append((items, logits.detach(), ce.detach()))
            return logits, ce
        return forward

    loss, grad = _step(dropout=0.5, rdrop_weight=2.0, wrap=recording)
    [(items, logits, ce)] = calls
    assert items.shape == (4, 4) and torch.equal(items[:2], items[2:])  # one forward pass over the batch twice
    assert not torch.allclose(logits[:2], logits[2:])  # ... under two dropout masks
    supervised = torch.tensor([[True, True, False, False], [True, True, True, True]])
    kl = symmetric_kl(logits, supervised)
    assert float(kl) > 0 and math.isclose(loss, float(ce + 2.0 * kl), rel_tol=1e-5) and grad.abs().sum() > 0


def test_a_run_with_rdrop_trains_saves_and_records_the_setting(tmp_path: Path) -> None:
    onepass = {"train.strategy": "onepass", "train.max_epochs": 1}
    plain = train_model(_cfg(**onepass), tiny_sequences(), tiny_vectors(), tmp_path / "plain", progress=False)
    rdrop = train_model(_cfg(**onepass, **{"train.rdrop_weight": 1.0}), tiny_sequences(), tiny_vectors(),
                        tmp_path / "rdrop", progress=False)
    assert rdrop.history[0]["loss"] != plain.history[0]["loss"] and rdrop.metrics["test_users"] == 24.0
