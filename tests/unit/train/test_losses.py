"""The sampled softmax (train.loss=sampled) against hand-written tensors and the full softmax."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lite_rec.core.config import build_config
from lite_rec.core.errors import ConfigError
from lite_rec.core.model_config import ModelConfig
from lite_rec.data.sequences import build_sequence_store
from lite_rec.model.rec_llm import build_model
from lite_rec.model.scoring import IGNORE_INDEX
from lite_rec.train.losses import (
    NegativeSampler,
    SampledSoftmax,
    sampled_forward,
    sampled_softmax_loss,
    target_counts,
)


def _full_cross_entropy(user: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = user @ weight.T  # (M, N+1)
    logits[:, 0] = float("-inf")  # padding, as LiteRecModel.item_logits
    return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)


def test_whole_catalog_once_is_the_full_softmax_cross_entropy() -> None:
    torch.manual_seed(0)
    n_items, dim = 9, 4
    user = torch.randn(6, dim)  # (M, D)
    weight = torch.randn(n_items + 1, dim)  # (N+1, D)
    targets = torch.tensor([3, 1, 9, IGNORE_INDEX, 3, 7])  # (M,) one unsupervised position
    catalog = torch.arange(1, n_items + 1)  # every item once: K = N draws at q = 1/N expect each once
    log_expected = torch.full((n_items,), math.log(n_items * (1.0 / n_items)))
    sampled = sampled_softmax_loss(user, targets, catalog, log_expected, weight)
    assert torch.allclose(sampled, _full_cross_entropy(user, weight, targets), atol=1e-6)


def test_logq_counts_a_likely_negative_less() -> None:
    # one position, target item 1 scored 2.0; one negative (item 2) scored 1.0, expected twice or half a time
    weight = torch.tensor([[0.0], [2.0], [1.0]])  # (N+1, D=1)
    user, targets, candidates = torch.tensor([[1.0]]), torch.tensor([1]), torch.tensor([2])
    often = sampled_softmax_loss(user, targets, candidates, torch.tensor([math.log(2.0)]), weight)
    rarely = sampled_softmax_loss(user, targets, candidates, torch.tensor([math.log(0.5)]), weight)
    assert often.item() == pytest.approx(-2.0 + math.log(math.exp(2.0) + math.exp(1.0) / 2.0), abs=1e-6)
    assert rarely.item() == pytest.approx(-2.0 + math.log(math.exp(2.0) + math.exp(1.0) / 0.5), abs=1e-6)
    assert often < rarely


def test_accidental_hits_are_left_out() -> None:
    weight = torch.tensor([[0.0], [2.0], [1.0], [5.0]])  # (N+1, D=1)
    user, targets = torch.tensor([[1.0], [1.0]]), torch.tensor([1, 3])
    # row 0's target (1) is also drawn twice, and column 0 (padding / an unsupervised position) is present
    candidates = torch.tensor([1, 3, 1, 2, 0])
    loss = sampled_softmax_loss(user, targets, candidates, torch.zeros(5), weight)
    row0 = -2.0 + math.log(math.exp(2.0) + math.exp(5.0) + math.exp(1.0))  # negatives 3 and 2 only
    row1 = -5.0 + math.log(math.exp(5.0) + 2 * math.exp(2.0) + math.exp(1.0))  # negatives 1, 1, 2
    assert loss.item() == pytest.approx((row0 + row1) / 2, abs=1e-5)


def test_corrected_negatives_estimate_the_full_normaliser() -> None:
    """The logQ direction: sum over drawn columns of exp(s - log E[count]) averages to sum_c exp(s_c)
    (in-batch at training frequency plus popularity draws); a wrong sign is off by orders of magnitude."""
    gen = torch.Generator().manual_seed(1)
    n_items, m, k = 50, 20, 30
    counts = np.r_[0.0, np.arange(n_items, 0, -1.0) ** 2]  # (N+1,) skewed training frequency
    sampler = NegativeSampler(counts, k, "popularity", in_batch=True)
    scores = torch.randn(n_items + 1, generator=gen, dtype=torch.float64)  # (N+1,) one user's item scores
    true_sum = scores[1:].exp().sum()
    torch.manual_seed(2)
    estimates = []
    for _ in range(4000):
        targets = torch.multinomial(sampler.target_share.float(), m, replacement=True, generator=gen)  # (M,)
        candidates, log_expected = sampler.candidates(targets)
        estimates.append((scores[candidates] - log_expected.double()).exp().sum())
    assert torch.stack(estimates).mean().item() == pytest.approx(true_sum.item(), rel=0.03)


def test_popularity_draws_follow_the_proposal() -> None:
    counts = np.array([0.0, 0.0, 9.0, 99.0])  # item 1 never a target: still drawn (+1 smoothing)
    sampler = NegativeSampler(counts, 20000, "popularity", in_batch=False)
    torch.manual_seed(0)
    drawn = torch.bincount(sampler.draw(), minlength=4).double() / 20000
    assert drawn[0] == 0
    assert torch.allclose(drawn[1:], torch.tensor([1 / 111, 10 / 111, 100 / 111], dtype=torch.float64), atol=0.006)


def test_target_counts_skip_each_users_first_item() -> None:
    store = build_sequence_store([[1, 2, 2], [3, 1], [4]])
    assert target_counts(store, n_items=4).tolist() == [0.0, 1.0, 2.0, 0.0, 0.0]


@pytest.mark.parametrize(("overrides", "field"), [
    (["train.loss=sampled", "train.strategy=onepass", "train.distill_from=[runs/a]"], "train.distill_from"),
    (["train.loss=sampled", "model.history_logit=true"], "model.history_logit"),
    (["train.loss=sampled", "train.num_negatives=0", "train.in_batch_negatives=false"], "train.num_negatives"),
    (["train.loss=softmax"], "train.loss"),
])
def test_sampled_loss_refuses_what_it_cannot_train(overrides: list[str], field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        build_config("ml-100k", overrides)


@pytest.mark.parametrize("head", ["linear", "inductive"])
@pytest.mark.parametrize("causal", [True, False])
def test_sampled_forward_reads_the_vectors_the_full_loss_reads(head: str, causal: bool) -> None:
    """SampledSoftmax's user and item vectors are the model's own: with the whole catalog as the
    negatives its loss is the model's full cross-entropy, for (B, T) and (B,) targets and either head;
    and the gradient reaches the backbone and the head."""
    torch.manual_seed(0)
    n_items = 12
    cfg = ModelConfig(backbone="lean", pretrained=False, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_seq_len=6,
                      dropout=0.0, backbone_dropout=0.0, pooling="last", item_repr="text", head=head)
    vectors = torch.randn(n_items + 1, 8)
    vectors[0] = 0
    model, _ = build_model(cfg, n_items, vectors, causal=causal)
    model.eval()  # the same head rows in both calls (the inductive head drops id parts in training)
    items = torch.tensor([[3, 5, 7, 0, 0, 0], [1, 2, 3, 4, 5, 6]])  # (B, T) right-padded
    if causal:
        targets = torch.tensor([[5, 7, 9, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX], [2, 3, 4, 5, 6, 7]])  # (B, T)
        user = model.prefix_user_vectors(items).flatten(0, 1)  # (B*T, D)
    else:
        targets = torch.tensor([9, 8])  # (B,)
        user = model.user_vectors(items)  # (B, D)
    _, full = model(items, targets)
    catalog = torch.arange(1, n_items + 1)  # every item once: expected count 1
    sampled = sampled_softmax_loss(user, targets.flatten(), catalog, torch.zeros(n_items), model.head_weight())
    assert torch.allclose(sampled, full, atol=1e-5)
    model.train()
    sampler = NegativeSampler(np.r_[0.0, np.ones(n_items)], 4, "uniform", in_batch=True)
    _, loss = SampledSoftmax(model, sampler)(items, targets)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.adapter.weight.grad.abs().sum() > 0  # the inputs' adapter: through the backbone
    head_grads = [p.grad for n, p in model.named_parameters() if n.startswith("head")]  # (the id part of an
    # inductive head may be dropped for every scored item in one step: the sum, not each part)
    assert all(g is not None for g in head_grads) and sum(g.abs().sum() for g in head_grads) > 0


def test_sampled_loss_refuses_several_training_processes() -> None:
    cfg = build_config("ml-100k", ["train.loss=sampled", "model.backbone=lean", "model.pretrained=false",
                                   "model.d_model=16", "model.n_layers=1", "model.n_heads=2", "model.d_ff=32",
                                   "model.item_repr=id"])
    model, _ = build_model(cfg.model, 5, None, causal=True)
    store = build_sequence_store([[1, 2, 3], [4, 5]])
    with pytest.raises(ConfigError, match=r"train\.loss=sampled trains in one process"):
        sampled_forward(model, store, cfg.train, torch.device("cpu"), distributed=True)
    assert isinstance(sampled_forward(model, store, cfg.train, torch.device("cpu"), distributed=False), SampledSoftmax)
