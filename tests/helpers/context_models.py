"""A tiny random-weight model that reads every input context (time gaps, ratings, time bias, the
request time with a floor), a small timed dataset for it, and the same histories as events."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lite_rec.core.model_config import ModelConfig
from lite_rec.infer.bundle import save_bundle
from lite_rec.model.rec_llm import LiteRecModel, build_model

HOUR, DAY = 3_600, 86_400
T0 = 978_300_000  # 2000-12-31T22:00:00Z


def context_model(*, n_items: int, window: int, seed: int = 0, item_repr: str = "text", history_logit: bool = False,
                  floor: int = HOUR, time_gaps: bool = True, ratings: bool = True, time_bias: bool = True,
                  query_time: bool = True) -> LiteRecModel:
    """A causal lean model over `n_items` items in eval mode. The context embeddings start at zero in
    training; here they are random and large, so that every context input moves the scores."""
    torch.manual_seed(seed)
    cfg = ModelConfig(backbone="lean", pretrained=False, d_model=16, n_layers=2, n_heads=2, d_ff=32, dropout=0.0,
                      max_seq_len=window, item_repr=item_repr, pooling="last", history_logit=history_logit,
                      time_gaps=time_gaps, ratings=ratings, time_bias=time_bias, query_time=query_time,
                      query_gap_floor=floor if query_time else 0)
    vectors = torch.randn(n_items + 1, 6)
    vectors[0] = 0
    model, _ = build_model(cfg, n_items, vectors, causal=True)
    with torch.no_grad():
        model.head.weight.mul_(20.0)  # spread logits: no near-ties between two inference paths
        for name in ("context_embedding", "query_gap_embedding", "time_bias"):
            if hasattr(model, name):
                table = getattr(model, name).weight
                table.normal_(0.0, 1.0 if name != "time_bias" else 2.0)
                if name != "time_bias":
                    table[0].zero_()  # padding / unknown stays zero, as training keeps it
        if history_logit:
            model.history_logit_param.fill_(-0.1)
    return model.eval()


def save_context_bundle(path: Path, model: LiteRecModel, item_ids: list[str]) -> Path:
    """`model` as a serving bundle: items 1..N named `item_ids`, popularity decreasing with item_idx."""
    n = len(item_ids)
    return save_bundle(
        path, spec=model.spec, state_dict=model.state_dict(), dataset="tiny",
        items=pd.DataFrame({"item_idx": range(1, n + 1), "item_id": item_ids, "title": [f"Title {i}" for i in item_ids]}),
        popularity=pd.DataFrame({"item_idx": range(1, n + 1), "count": np.arange(n, 0, -1)}),
    )


def timed_sequences(n_items: int, users: int = 7, seed: int = 3) -> pd.DataFrame:
    """``sequences.parquet`` columns with times and ratings: bursts in the same second, minutes, days
    and months apart; test items in the same second as the validation item, minutes, hours or
    weeks after it (both sides of a one-hour floor)."""
    rng = np.random.default_rng(seed)
    rows = []
    steps = np.array([0, 0, 0, 5, 40, 300, 2 * HOUR, DAY, 9 * DAY, 60 * DAY])
    test_gaps = [0, 30, 20 * 60, 2 * HOUR, 3 * DAY, 40 * DAY]
    for u in range(users):
        n = int(rng.integers(3, 12))
        items = rng.choice(np.arange(1, n_items + 1), size=n + 2, replace=False)
        ts = T0 + np.cumsum(rng.choice(steps, size=n + 1))
        ratings = rng.integers(1, 6, size=n + 2).astype(float)
        rows.append({"user_idx": u, "user_id": f"u{u}", "train_seq": items[:n].tolist(), "valid_item_idx": int(items[n]),
                     "test_item_idx": int(items[n + 1]), "train_ts": ts[:n].tolist(), "valid_ts": int(ts[n]),
                     "test_ts": int(ts[n] + test_gaps[u % len(test_gaps)]), "train_rating": ratings[:n].tolist(),
                     "valid_rating": float(ratings[n]), "test_rating": float(ratings[n + 1])})
    return pd.DataFrame(rows)


def split_events(sequences: pd.DataFrame, item_ids: list[str]) -> tuple[list[list[dict]], list[int]]:
    """Each user's train + validation items as events ``{"item_id", "ts", "rating"}`` and the test item's
    time: the request the offline test split stands for."""
    histories, times = [], []
    for _, row in sequences.iterrows():
        items = [*row["train_seq"], row["valid_item_idx"]]
        ts = [*row["train_ts"], row["valid_ts"]]
        ratings = [*row["train_rating"], row["valid_rating"]]
        histories.append([{"item_id": item_ids[i - 1], "ts": int(t), "rating": float(r)} for i, t, r in zip(items, ts, ratings)])
        times.append(int(row["test_ts"]))
    return histories, times
