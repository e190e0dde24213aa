"""Optimizer groups, the lr schedule and the resume fingerprint of the training loop."""

from __future__ import annotations

import pytest
import torch

from lite_rec.core.config import ModelConfig, build_config
from lite_rec.core.errors import LiteRecError
from lite_rec.model.rec_llm import build_model
from lite_rec.train.trainer import make_optimizer, make_scheduler, resolve_device, run_fingerprint
from tests.unit.train.test_run import tiny_sequences, tiny_vectors


def _lrs(total: int, warmup_ratio: float) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_scheduler(opt, total, warmup_ratio)
    out = []
    for _ in range(total):
        out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return out


def test_linear_warmup_then_constant() -> None:
    assert _lrs(6, 0.5) == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0, 1.0, 1.0])
    assert _lrs(3, 0.0) == pytest.approx([1.0, 1.0, 1.0])


def test_weight_decay_only_on_weight_matrices() -> None:
    cfg = ModelConfig(backbone="lean", pretrained=False, d_model=16, n_layers=1, n_heads=2, d_ff=32,
                      item_repr="text+id")
    model, _ = build_model(cfg, 30, tiny_vectors(), causal=False)
    model.unfreeze_item_vectors()
    decay, no_decay = make_optimizer(model, 1e-3, 0.1, 1e-6, torch.device("cpu")).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {names[id(p)] for p in no_decay["params"]} == {
        "item_vectors", "item_embedding.weight", "adapter.bias", "backbone.blocks.0.attn_norm.weight",
        "backbone.blocks.0.ff_norm.weight", "backbone.final_norm.weight"}
    assert "head.weight" in {names[id(p)] for p in decay["params"]}
    assert decay["eps"] == 1e-6


def test_fingerprint_ignores_runtime_settings_but_not_results_settings() -> None:
    seqs, vecs = tiny_sequences(), tiny_vectors()
    base = run_fingerprint(build_config("ml-100k"), seqs, vecs)
    assert run_fingerprint(build_config("ml-100k", ["train.device=cpu", "train.num_threads=1"]), seqs, vecs) == base
    assert run_fingerprint(build_config("ml-100k", ["train.seed=1"]), seqs, vecs) != base
    assert run_fingerprint(build_config("ml-100k"), tiny_sequences(seed=1), vecs)["sequences_sha256"] != base["sequences_sha256"]


def test_cuda_device_is_refused_where_there_is_none() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(LiteRecError, match="train.device='cuda'"):
            resolve_device("cuda")
