"""Tiny random-weight recommendation models (and their bundles) for unit tests of the inference paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lite_rec.core.model_config import ModelConfig
from lite_rec.infer.bundle import save_bundle
from lite_rec.model.rec_llm import LiteRecModel, build_model


def tiny_model(*, n_items: int, window: int, backbone: str = "lean", item_repr: str = "text", causal: bool = False,
               seed: int = 0, pooling: str = "mean", d_model: int = 16, n_layers: int = 2, n_heads: int = 2,
               d_ff: int = 32) -> LiteRecModel:
    """A model over `n_items` items with 6-dim item vectors, in eval mode.

    The head's weights are scaled up so that logits are spread out: top-k comparisons between
    two inference paths then have no near-ties that rounding could reorder.
    """
    torch.manual_seed(seed)
    cfg = ModelConfig(backbone=backbone, pretrained=False, d_model=d_model, n_layers=n_layers, n_heads=n_heads, d_ff=d_ff,
                      dropout=0.0, max_seq_len=window, item_repr=item_repr, pooling=pooling)
    vectors = torch.randn(n_items + 1, 6)  # (N+1, 6), row 0 = padding
    vectors[0] = 0
    model, _ = build_model(cfg, n_items, vectors, causal=causal)
    with torch.no_grad():
        model.head.weight.mul_(20.0)
    return model.eval()


def save_tiny_bundle(path: Path, model: LiteRecModel, item_ids: list[str], titles: list[str] | None = None) -> Path:
    """`model` as a serving bundle: items 1..N named `item_ids`, popularity decreasing with item_idx."""
    n = len(item_ids)
    return save_bundle(
        path, spec=model.spec, state_dict=model.state_dict(), dataset="tiny",
        items=pd.DataFrame({"item_idx": range(1, n + 1), "item_id": item_ids, "title": titles or item_ids}),
        popularity=pd.DataFrame({"item_idx": range(1, n + 1), "count": np.arange(n, 0, -1)}),
    )
