"""The `score` Prefect flow end to end (run in this process against the run's Prefect server,
tests/conftest.py ``prefect_api``): a bundle and processed data in, a DuckDB-readable Parquet of
everyone's top-k out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
import torch

from lite_rec.core.config import ModelConfig, build_config
from lite_rec.infer.bundle import save_bundle
from lite_rec.infer.recommender import Recommender
from lite_rec.model.rec_llm import build_model

pytestmark = pytest.mark.integration

N_ITEMS = 15


@pytest.fixture(scope="module", autouse=True)
def prefect_server(prefect_api: str) -> Iterator[None]:
    """This module's flows report to the shared server (what Prefect's test harness did with a
    temporary server of its own, ~20 CPU-seconds to start)."""
    import inspect

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:  # as the harness does: send what the flows logged while the server is set
        try:
            result = APILogWorker.instance().drain()
            if inspect.isawaitable(result):
                await result
        except RuntimeError:  # no log worker started
            pass
        result = EventsWorker.drain_all()
        if inspect.isawaitable(result):
            await result

    with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
        try:
            yield
        finally:
            # otherwise they are sent at exit, after the last worker stopped the server: a minute of retries
            run_coro_as_sync(drain())


def test_score_flow_writes_every_users_top_k(tmp_path: Path) -> None:
    from lite_rec_flows.score import score_flow

    torch.manual_seed(2)
    mcfg = ModelConfig(backbone="lean", pretrained=False, d_model=16, n_layers=1, n_heads=2, d_ff=32, dropout=0.0, max_seq_len=4)
    vectors = torch.randn(N_ITEMS + 1, 6)
    vectors[0] = 0
    model, _ = build_model(mcfg, N_ITEMS, vectors, causal=False)
    ids = [f"m{i}" for i in range(1, N_ITEMS + 1)]
    items = pd.DataFrame({"item_idx": range(1, N_ITEMS + 1), "item_id": ids, "title": ids})
    bundle = save_bundle(tmp_path / "bundle", spec=model.spec.to_dict(), model_config=mcfg, state_dict=model.state_dict(),
                         items=items, popularity=pd.DataFrame({"item_idx": range(1, N_ITEMS + 1), "count": np.ones(N_ITEMS)}),
                         dataset="ml-100k")
    data_dir = tmp_path / "data"
    cfg = build_config("ml-100k", {"data_dir": str(data_dir)})
    cfg.processed_dir.mkdir(parents=True)
    items.to_parquet(cfg.processed_dir / "items.parquet")
    pd.DataFrame({"user_idx": [0, 1, 2], "user_id": ["7", "8", "9"], "train_seq": [[1, 2], [3, 4, 5], [6]],
                  "valid_item_idx": [3, 6, 7], "test_item_idx": [4, 7, 8]}).to_parquet(cfg.processed_dir / "sequences.parquet")

    result = score_flow(dataset="ml-100k", overrides={"data_dir": str(data_dir), "serve": {"device": "cpu"}},
                        model=str(bundle), k=3, user_ids=["9", "7"])
    out = data_dir / "scores" / "ml-100k" / "topk.parquet"
    assert result.path == out and result.users == 2 and result.rows == 6
    rows = duckdb.sql(f"select user_id, rank, item_id from '{out}' order by user_id, rank").fetchall()
    want = Recommender.from_path(bundle).recommend([["m1", "m2", "m3", "m4"], ["m6", "m7", "m8"]], 3)
    assert rows == [("7", r + 1, i) for r, i in enumerate(want[0].item_ids)] + [("9", r + 1, i) for r, i in enumerate(want[1].item_ids)]


def test_score_flow_sends_a_context_model_every_users_events_at_now(tmp_path: Path) -> None:
    """A champion that reads times and ratings: the flow scores every user's train, validation and test
    events from the processed data, with one request time (the clock when the run starts)."""
    import pyarrow.parquet as pq
    from lite_rec_flows.score import score_flow

    from tests.helpers.context_models import T0, context_model, save_context_bundle

    ids = [f"m{i}" for i in range(1, N_ITEMS + 1)]
    bundle = save_context_bundle(tmp_path / "bundle", context_model(n_items=N_ITEMS, window=3, seed=4), ids)
    data_dir = tmp_path / "data"
    cfg = build_config("ml-100k", {"data_dir": str(data_dir)})
    cfg.processed_dir.mkdir(parents=True)
    pd.DataFrame({"item_idx": range(1, N_ITEMS + 1), "item_id": ids, "title": ids}).to_parquet(cfg.processed_dir / "items.parquet")
    seqs = pd.DataFrame({"user_idx": [0, 1], "user_id": ["7", "8"], "train_seq": [[1, 2], [3, 4, 5]],
                         "valid_item_idx": [3, 6], "test_item_idx": [4, 7],
                         "train_ts": [[T0, T0 + 10], [T0, T0 + 5, T0 + 9_000]], "valid_ts": [T0 + 20, T0 + 9_100],
                         "test_ts": [T0 + 86_400, T0 + 9_200], "train_rating": [[5.0, 4.0], [1.0, 2.0, 3.0]],
                         "valid_rating": [3.0, 4.0], "test_rating": [2.0, 5.0]})
    seqs.to_parquet(cfg.processed_dir / "sequences.parquet")

    result = score_flow(dataset="ml-100k", overrides={"data_dir": str(data_dir), "serve": {"device": "cpu"}}, model=str(bundle), k=3)
    out = data_dir / "scores" / "ml-100k" / "topk.parquet"
    assert result.users == 2 and result.rows == 6
    as_of = pq.read_schema(out).metadata[b"lite_rec.as_of"].decode()
    now = int(pd.Timestamp(as_of).timestamp())
    events = [[{"item_id": ids[i - 1], "ts": t, "rating": r} for i, t, r in zip([*s, v, x], [*ts, vt, xt], [*rs, vr, xr])]
              for s, v, x, ts, vt, xt, rs, vr, xr in seqs[["train_seq", "valid_item_idx", "test_item_idx", "train_ts", "valid_ts",
                                                           "test_ts", "train_rating", "valid_rating", "test_rating"]].itertuples(index=False)]
    want = Recommender.from_path(bundle).recommend(events, 3, request_times=[now, now])
    rows = duckdb.sql(f"select user_id, rank, item_id from '{out}' order by user_id, rank").fetchall()
    assert rows == [("7", r + 1, i) for r, i in enumerate(want[0].item_ids)] + [("8", r + 1, i) for r, i in enumerate(want[1].item_ids)]
