"""Tiny random-weight recommendation models for unit tests of the inference paths."""

from __future__ import annotations

import torch

from lite_rec.config import ModelConfig
from lite_rec.model import LiteRecModel, build_model


def tiny_model(*, n_items: int, window: int, backbone: str = "lean", item_repr: str = "text", causal: bool = False,
               seed: int = 0, pooling: str = "mean", d_model: int = 16, n_heads: int = 2, d_ff: int = 32) -> LiteRecModel:
    """A 2-layer model over `n_items` items with 6-dim item vectors, in eval mode.

    The head's weights are scaled up so that logits are spread out: top-k comparisons between
    two inference paths then have no near-ties that rounding could reorder.
    """
    torch.manual_seed(seed)
    cfg = ModelConfig(backbone=backbone, pretrained=False, d_model=d_model, n_layers=2, n_heads=n_heads, d_ff=d_ff,
                      dropout=0.0, max_seq_len=window, item_repr=item_repr, pooling=pooling)
    vectors = torch.randn(n_items + 1, 6)  # (N+1, 6), row 0 = padding
    vectors[0] = 0
    model, _ = build_model(cfg, n_items, vectors, causal=causal)
    with torch.no_grad():
        model.head.weight.mul_(20.0)
    return model.eval()
