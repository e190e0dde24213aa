"""The cold-start protocol on a hand-written folder: which items are cold, what the warm folder
keeps, the test cases, the baselines' ranks, the slices, and the whole chain with a tiny model."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from benchmarks.cold_start_eval import evaluate, extended_recommender, model_ranks
from lite_rec.core.errors import DataError
from lite_rec.eval.coldstart import (
    cold_items,
    load_warm_split,
    popularity_ranks,
    slice_metrics,
    text_similarity_ranks,
    write_warm_split,
)

REPO = Path(__file__).resolve().parents[3]

# First rating times: i1 100, i2 110, i3 120, i4 200, i5 300, i6 400 (item_idx = the number).
# (user, [(item, ts, rating), ...] oldest first: train..., valid, test)
USERS = [
    ("a", [(1, 100, 4), (2, 110, 3), (3, 120, 5), (5, 300, 2), (6, 400, 4)]),  # test item cold
    ("b", [(2, 150, 1), (5, 310, 2), (1, 320, 3), (3, 330, 4), (4, 340, 5)]),  # a cold event inside
    ("c", [(4, 200, 5), (3, 210, 4), (1, 220, 3), (2, 230, 2)]),  # no cold event
    ("d", [(5, 305, 3), (6, 410, 3), (1, 420, 4), (3, 430, 5)]),  # 2 warm events: dropped from training
    ("e", [(5, 350, 1), (6, 450, 2), (1, 460, 3)]),  # history all cold: no test case
]
VECTORS = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, -2, 0], [1, 1, 1]], dtype=torch.float32)


def write_folder(root: Path, users: list = USERS, vectors: torch.Tensor = VECTORS, n_items: int = 6) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for u, (user_id, events) in enumerate(users):
        items, ts, ratings = (list(x) for x in zip(*events, strict=True))
        rows.append({"user_idx": u, "user_id": user_id, "train_seq": items[:-2], "valid_item_idx": items[-2],
                     "test_item_idx": items[-1], "train_ts": ts[:-2], "valid_ts": ts[-2], "test_ts": ts[-1],
                     "train_rating": [float(r) for r in ratings[:-2]], "valid_rating": float(ratings[-2]),
                     "test_rating": float(ratings[-1])})
    pd.DataFrame(rows).to_parquet(root / "sequences.parquet", index=False)
    pd.DataFrame({"item_idx": range(1, n_items + 1), "item_id": [f"i{i}" for i in range(1, n_items + 1)],
                  "title": [f"Title {i}" for i in range(1, n_items + 1)],
                  "genres": ["Drama"] * n_items}).to_parquet(root / "items.parquet", index=False)
    save_file({"vectors": vectors}, str(root / "vectors.safetensors"))
    (root / "stats.json").write_text(json.dumps({"dataset": "tiny"}))
    return root


@pytest.fixture()
def warm(tmp_path: Path) -> Path:
    src = write_folder(tmp_path / "src")
    write_warm_split(src, tmp_path / "warm", cold_items(src, 1 / 3))
    return tmp_path / "warm"


def test_the_latest_first_rated_items_are_cold_and_the_cutoff_is_the_earliest_of_them(tmp_path: Path) -> None:
    src = write_folder(tmp_path / "src")
    cold = cold_items(src, 1 / 3)  # 2 of 6
    assert cold.item_idx.tolist() == [5, 6] and cold.first_ts.tolist() == [300, 400] and cold.cutoff == 300
    assert cold_items(src, 0.5).item_idx.tolist() == [4, 5, 6]
    assert cold_items(src, 0.1).item_idx.tolist() == [6]  # round(0.6) = 1


def test_ties_at_the_cutoff_go_by_item_idx(tmp_path: Path) -> None:
    # first rating times: 5 at 50, 1 at 70, 2 and 3 both at 90, 4 at 300
    users = [("a", [(5, 50, 4), (1, 70, 4), (2, 90, 4), (3, 90, 4), (4, 300, 4)]), ("b", [(1, 100, 1), (2, 110, 1), (3, 120, 1)])]
    src = write_folder(tmp_path / "tie", users, VECTORS[:6], n_items=5)
    two = cold_items(src, 0.4)
    assert two.item_idx.tolist() == [3, 4] and two.cutoff == 90  # of the tied 2 and 3, the larger item_idx is later
    assert cold_items(src, 0.6).item_idx.tolist() == [2, 3, 4]


def test_the_warm_folder_has_no_cold_event_and_is_split_again(warm: Path) -> None:
    seqs = pd.read_parquet(warm / "sequences.parquet")
    assert seqs["user_id"].tolist() == ["a", "b", "c"] and seqs["user_idx"].tolist() == [0, 1, 2]
    # old 1..4 keep their numbers (warm items in their order), 5 and 6 are gone
    assert seqs["train_seq"].map(list).tolist() == [[1], [2, 1], [4, 3]]
    assert seqs["valid_item_idx"].tolist() == [2, 3, 1] and seqs["test_item_idx"].tolist() == [3, 4, 2]
    assert seqs["train_ts"].map(list).tolist() == [[100], [150, 320], [200, 210]]
    assert seqs["valid_ts"].tolist() == [110, 330, 220] and seqs["test_ts"].tolist() == [120, 340, 230]
    assert seqs["train_rating"].map(list).tolist() == [[4.0], [1.0, 3.0], [5.0, 4.0]]
    assert seqs["valid_rating"].tolist() == [3.0, 4.0, 3.0] and seqs["test_rating"].tolist() == [5.0, 5.0, 2.0]
    record = json.loads((warm / "coldstart.json").read_text())
    assert record["cutoff"] == 300 and record["n_warm_items"] == 4 and record["n_cold_items"] == 2
    assert [c["item_id"] for c in record["cold_items"]] == ["i5", "i6"]
    assert record["dropped_from_training"] == ["d", "e"] and record["no_history"] == ["e"]
    assert record["cold_events_removed_from_histories"] == 6  # a: i5; b: i5; d: i5, i6; e: i5, i6
    assert record["test_cases"] == 4 and record["test_cases_cold_target"] == 1
    stats = json.loads((warm / "stats.json").read_text())
    assert stats["items"] == 4 and stats["users"] == 3 and stats["cold_start"]["cutoff"] == 300


def test_reindexing_keeps_each_items_text_and_vector(tmp_path: Path) -> None:
    src = write_folder(tmp_path / "src")
    write_warm_split(src, tmp_path / "warm", [2, 5])  # a cold set in the middle of the numbering
    items = pd.read_parquet(tmp_path / "warm" / "items.parquet")
    assert items["item_idx"].tolist() == [1, 2, 3, 4] and items["item_id"].tolist() == ["i1", "i3", "i4", "i6"]
    assert items["title"].tolist() == ["Title 1", "Title 3", "Title 4", "Title 6"]
    vectors = load_file(str(tmp_path / "warm" / "vectors.safetensors"))["vectors"]
    assert torch.equal(vectors, VECTORS[[0, 1, 3, 4, 6]])
    assert torch.equal(load_file(str(tmp_path / "warm" / "cold_vectors.safetensors"))["vectors"], VECTORS[[2, 5]])
    mapping = pd.read_parquet(tmp_path / "warm" / "item_map.parquet")
    assert dict(zip(mapping["item_id"], mapping["item_idx"])) == {"i1": 1, "i3": 2, "i4": 3, "i6": 4}
    seqs = pd.read_parquet(tmp_path / "warm" / "sequences.parquet")
    assert seqs["train_seq"].map(list).tolist()[2] == [3]  # c: i4, (i3 -> valid), i1 test; i2 removed
    assert seqs[["valid_item_idx", "test_item_idx"]].values.tolist()[2] == [2, 1]
    split = load_warm_split(tmp_path / "warm")
    assert split.catalog == ["i1", "i3", "i4", "i6", "i2", "i5"]  # warm, then cold: extend_bundle's order
    assert torch.equal(split.vectors, VECTORS[[0, 1, 3, 4, 6, 2, 5]])


def test_the_test_cases_are_the_original_requests_without_cold_events(warm: Path) -> None:
    split = load_warm_split(warm)
    cases = split.cases
    assert cases["user_id"].tolist() == ["a", "b", "c", "d"]
    assert cases["history_item_id"].map(list).tolist() == [["i1", "i2", "i3"], ["i2", "i1", "i3"], ["i4", "i3", "i1"], ["i1"]]
    assert cases["history_ts"].map(list).tolist() == [[100, 110, 120], [150, 320, 330], [200, 210, 220], [420]]
    assert cases["history_rating"].map(list).tolist()[1] == [1.0, 3.0, 4.0]
    assert cases["target_item_id"].tolist() == ["i6", "i4", "i2", "i3"] and cases["target_ts"].tolist() == [400, 340, 230, 430]
    assert split.target_cold.tolist() == [True, False, False, False]
    assert split.catalog == ["i1", "i2", "i3", "i4", "i5", "i6"]
    assert split.targets().tolist() == [6, 4, 2, 3]


def test_popularity_ranks_cold_items_last(warm: Path) -> None:
    # warm training counts: 1 twice (a, b), 2, 3, 4 once; cold 5, 6 zero -> order 1 2 3 4 5 6.
    # a (saw 1 2 3) target 6: 4, 5 above -> 2; b (2 1 3) target 4 -> 0; c (4 3 1) target 2 -> 0; d (1) target 3: 2 above -> 1
    assert popularity_ranks(load_warm_split(warm)).tolist() == [2, 0, 0, 1]


def test_text_similarity_ranks_by_the_recent_items_text(warm: Path) -> None:
    split = load_warm_split(warm)
    # a, b: history 1 2 3 -> query (1,1,1): 6 = (1,1,1) scores 1, 4 = (1,1,0) 0.82, 5 = (1,-2,0) < 0 -> a's 6 is 0, b's 4 is 1.
    # c: unit(1,1,0) + (0,0,1) + (1,0,0) = (1.71, .71, 1): 6 (3.41/sqrt 3) beats 2 (0.71); 5 (0.30/sqrt 5) does not -> 1.
    # d: query (1,0,0): 4 (.71), 6 (.58) and 5 (.45) beat 3 (0; 2 ties with it, ties count for the target) -> 3
    assert text_similarity_ranks(split).tolist() == [0, 1, 1, 3]
    # the last item only: a, b read 3 = (0,0,1) (6 still first, 4 behind it); c reads 1 = (1,0,0): 6 and 5 beat 2 -> 2
    assert text_similarity_ranks(split, last=1).tolist() == [0, 1, 2, 3]


def test_slices() -> None:
    got = slice_metrics(np.array([2, 0, 0, 1]), np.array([True, False, False, False]), ks=(1, 2))
    assert got["cold"] == {"recall_1": 0.0, "ndcg_1": 0.0, "recall_2": 0.0, "ndcg_2": 0.0, "cases": 1}
    assert got["warm"]["recall_1"] == pytest.approx(2 / 3) and got["warm"]["recall_2"] == 1.0
    assert got["warm"]["ndcg_2"] == pytest.approx((2 + 1 / math.log2(3)) / 3) and got["warm"]["cases"] == 3
    assert got["all"]["recall_2"] == pytest.approx(3 / 4) and got["all"]["cases"] == 4
    assert slice_metrics(np.array([math.inf]), np.array([True]))["cold"]["recall_20"] == 0.0


def test_inputs_are_checked(tmp_path: Path) -> None:
    src = write_folder(tmp_path / "src")
    with pytest.raises(DataError, match="between 0 and 1"):
        cold_items(src, 1.0)
    with pytest.raises(DataError, match="at least one cold"):
        cold_items(src, 0.01)
    with pytest.raises(DataError, match="1..6"):
        write_warm_split(src, tmp_path / "w1", [7])
    with pytest.raises(DataError, match="every item would be cold"):
        write_warm_split(src, tmp_path / "w2", [1, 2, 3, 4, 5, 6])
    with pytest.raises(DataError, match="another folder"):
        write_warm_split(src, src, [6])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(DataError, match="not empty"):
        write_warm_split(src, tmp_path / "full", [6])
    save_file({"vectors": VECTORS[:5]}, str(tmp_path / "short.safetensors"))
    with pytest.raises(DataError, match=r"shape \(7, D\)"):
        write_warm_split(src, tmp_path / "w3", [6], item_vectors=tmp_path / "short.safetensors")
    seqs = pd.read_parquet(src / "sequences.parquet").drop(columns=["train_ts"])
    seqs.to_parquet(src / "sequences.parquet", index=False)
    with pytest.raises(DataError, match="train_ts"):
        cold_items(src, 0.5)
    with pytest.raises(DataError, match="prepare"):
        load_warm_split(tmp_path / "full")


def test_the_script_imports_without_the_pipelines_libraries() -> None:
    code = ("import sys\nfor name in ('duckdb', 'prefect', 'mlflow'):\n    sys.modules[name] = None\n"
            "sys.argv = ['x', '--help']\nimport runpy\n"
            "try:\n    runpy.run_path('benchmarks/cold_start_eval.py', run_name='__main__')\nexcept SystemExit as e:\n"
            "    assert e.code == 0\nfrom lite_rec.infer.catalog import extend_bundle\nfrom lite_rec.train.export import bundle_run\n"
            "print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def test_the_whole_chain_with_a_tiny_model(warm: Path, tmp_path: Path) -> None:
    from lite_rec.core.config import build_config
    from lite_rec.data.sequences import read_sequences
    from lite_rec.train.run import read_item_vectors, train_model

    cfg = build_config("ml-1m", [
        "model.backbone=lean", "model.pretrained=false", "model.item_repr=text+id", "model.head=inductive",
        "model.d_model=8", "model.n_layers=1", "model.n_heads=2", "model.d_ff=16", "model.max_seq_len=4",
        "model.pooling=last", "model.history_logit=true", "model.time_gaps=true", "model.ratings=true",
        "model.time_bias=true", "model.query_time=true", "train.strategy=onepass", "train.batch_size=2",
        "train.max_epochs=1", "train.device=cpu", "train.bf16=false", "eval.batch_size=4",
    ])
    train_model(cfg, read_sequences(warm / "sequences.parquet"), read_item_vectors(warm / "vectors.safetensors"),
                tmp_path / "run", progress=False)
    split = load_warm_split(warm)
    rec = extended_recommender(tmp_path / "run", split, tmp_path / "bundles", device="cpu", eager=True)
    assert rec.num_items == 6 and rec.item_ids.tolist() == split.catalog
    assert rec.context_fields == ["ts", "rating", "request_time"]
    # the added items have no learned id part: their output vectors are their text's projection alone
    assert torch.count_nonzero(rec.model.head_id.weight[5:]) == 0
    assert torch.count_nonzero(rec.model.head_id.weight[1:5]) > 0
    with torch.no_grad():
        expected = rec.model.head_text(split.vectors[5:])
        assert torch.allclose(rec.model.head_weight()[5:], expected)
    ranks = model_ranks(rec, split)
    # every target is among the unmasked items, so each rank is a position in that short list
    assert all(r < 6 - len(h) for r, h in zip(ranks, split.histories, strict=True))
    report = evaluate(warm, tmp_path / "run", device="cpu", eager=True)
    assert set(report["results"]) == {"popularity", "text_similarity", "model"}
    assert report["cases"] == {"cold": 1, "warm": 3, "all": 4}
    model = report["results"]["model"]
    assert model == slice_metrics(ranks, split.target_cold)
    assert report["results"]["popularity"]["cold"]["recall_10"] == 1.0  # 6 items: every rank < 10


def test_validation_during_training_sees_the_weights_a_fused_optimizer_wrote() -> None:
    """The inductive head caches its item rows at inference, keyed on the weights' version counters;
    a fused AdamW step (the trainer's optimizer on CUDA) writes the weights without bumping them, so
    the per-epoch validation scored every epoch with the first validation's rows. Switching the
    model to eval mode (every evaluation does) must drop the cache."""
    from lite_rec.core.config import build_config
    from lite_rec.model.rec_llm import build_model

    cfg = build_config("ml-1m", ["model.backbone=lean", "model.pretrained=false", "model.item_repr=text+id",
                                 "model.head=inductive", "model.d_model=8", "model.n_layers=1", "model.n_heads=2",
                                 "model.d_ff=16", "model.max_seq_len=4"])
    model, _ = build_model(cfg.model, 6, VECTORS, causal=True)
    model.eval()
    with torch.no_grad():
        before = model.head_weight().clone()
    model.train()
    optimizer = torch.optim.AdamW([model.head_text.weight, model.head_id.weight], lr=0.1, fused=True)
    for p in (model.head_text.weight, model.head_id.weight):
        p.grad = torch.ones_like(p)
    optimizer.step()
    model.eval()
    with torch.no_grad():
        after = model.head_weight()
        fresh = model.head_text(model.item_vectors) + model.head_id.weight
    assert not torch.allclose(after, before) and torch.allclose(after, fresh)
