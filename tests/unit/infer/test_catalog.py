"""Extending a trained bundle's catalog without retraining (``lite_rec.infer.catalog``) and the
inductive head it relies on (``model.head=inductive``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lite_rec.core.model_config import ModelConfig
from lite_rec.infer.bundle import load_bundle, save_bundle
from lite_rec.infer.catalog import CatalogError, extend_bundle
from lite_rec.infer.fast_path import FastPathOptions, fast_recommender
from lite_rec.infer.recommender import Recommender
from lite_rec.model.rec_llm import LiteRecModel, build_model

N, DIM = 12, 6
IDS = [f"i{i}" for i in range(1, N + 1)]


def _model(head: str = "inductive", item_repr: str = "text+id") -> tuple[LiteRecModel, torch.Tensor]:
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="lean", pretrained=False, d_model=16, n_layers=1, n_heads=2, d_ff=32, dropout=0.0,
                      max_seq_len=5, pooling="last", item_repr=item_repr, head=head)
    vectors = torch.randn(N + 1, DIM)  # (N+1, DIM), row 0 = padding
    vectors[0] = 0
    model, _ = build_model(cfg, N, vectors, causal=True)
    with torch.no_grad():
        if head == "inductive":
            model.head_id.weight.normal_()  # a trained id part: the test can tell it apart from a new item's zeros
            model.head_text.weight.mul_(10.0)
        else:
            model.head.weight.mul_(10.0)
    return model.eval(), vectors


def _bundle(path: Path, model: LiteRecModel) -> Path:
    return save_bundle(path, spec=model.spec, state_dict=model.state_dict(), dataset="tiny",
                       items=pd.DataFrame({"item_idx": range(1, N + 1), "item_id": IDS, "title": [f"Film {i}" for i in IDS]}),
                       popularity=pd.DataFrame({"item_idx": range(1, N + 1), "count": np.arange(N, 0, -1)}))


def test_inductive_head_is_text_projection_plus_id_part_and_drops_id_parts_only_in_training() -> None:
    model, vectors = _model()
    with torch.no_grad():
        weight = model.head_weight()  # (N+1, D)
        assert torch.allclose(weight, model.head_text(vectors) + model.head_id.weight, atol=1e-6)
        assert model.head_weight() is weight  # computed once at inference
        model.head_id.weight[3] += 1.0  # a changed weight is seen: no stale rows
        assert torch.allclose(model.head_weight()[3], weight[3] + 1.0, atol=1e-6)
    model.train()
    torch.manual_seed(1)
    trained = model.head_weight().detach()  # (N+1, D): about half the rows without their id part
    text = model.head_text(vectors).detach()
    dropped = [i for i in range(N + 1) if torch.allclose(trained[i], text[i], atol=1e-6)]
    assert 0 < len(dropped) < N + 1
    with pytest.raises(ValueError, match="model.head=inductive computes item vectors from their text"):
        ModelConfig(item_repr="id", head="inductive")


def test_new_items_are_appended_and_changed_ones_updated_without_retraining(tmp_path: Path) -> None:
    model, vectors = _model()
    old = load_bundle(_bundle(tmp_path / "v1", model))
    new_vector = torch.randn(DIM)
    items = pd.DataFrame({"item_id": ["new-a", "i3", "i5", "new-b"],
                          "title": ["A New Film", "Film i3 (director's cut)", "Film i5", "Twin Of i7"]})
    batch = torch.stack([new_vector, torch.randn(DIM), vectors[5], vectors[7]])  # (4, DIM): i5 as before
    path, change = extend_bundle(old, items, batch, tmp_path / "v2", extra={"catalog": {"extends": "v1"}})
    assert (change.added, change.updated, change.unchanged, change.num_items) == (["new-a", "new-b"], ["i3"], ["i5"], N + 2)
    new = load_bundle(path)
    assert new.items["item_id"].tolist() == [*IDS, "new-a", "new-b"]  # existing item_idx never move
    assert new.items.loc[2, "title"] == "Film i3 (director's cut)" and new.extra["catalog"] == {"extends": "v1"}
    assert new.popularity["item_idx"].tolist()[-2:] == [N + 1, N + 2]  # count 0: last in the fallback list
    rec = Recommender(new)
    with torch.no_grad():
        weight = rec.model.head_weight()  # (N+3, D)
        text = rec.model.head_text(rec.model.item_vectors)
    # a new item is its text alone (no id part); a known one keeps its learned id part, also when updated
    assert torch.allclose(weight[N + 1], text[N + 1], atol=1e-6) and torch.allclose(weight[N + 2], text[7], atol=1e-5)
    assert torch.allclose(weight[3], text[3] + model.head_id.weight[3], atol=1e-5)
    assert torch.equal(rec.model.item_vectors[3], batch[1]) and torch.equal(rec.model.item_vectors[:N + 1][4:], vectors[4:])
    # the old items score as before for a history of old items (the new rows only add candidates)
    history = [["i1", "i2", "i4"]]
    before = Recommender(old).recommend(history, k=N - 3)[0]
    after = rec.recommend(history, k=N - 1)[0]
    assert [i for i in after.item_ids if i not in ("new-a", "new-b", "i3")] == [i for i in before.item_ids if i != "i3"]
    # the fast path (the lean plan) reads the same rows
    fast = fast_recommender(new, "cpu", FastPathOptions())
    assert fast.recommend([["new-a", "i2"]], k=5)[0].item_ids == rec.recommend([["new-a", "i2"]], k=5)[0].item_ids


def test_a_linear_head_model_cannot_take_new_items(tmp_path: Path) -> None:
    model, _ = _model(head="linear")
    old = load_bundle(_bundle(tmp_path / "v1", model))
    with pytest.raises(CatalogError, match=r"linear item head \(model.head=linear\).*cannot score an item it was not "
                                           r"trained on.*model.head=inductive"):
        extend_bundle(old, pd.DataFrame({"item_id": ["x"], "title": ["X"]}), torch.randn(1, DIM), tmp_path / "v2")
    assert not (tmp_path / "v2").exists()


def test_vectors_of_the_wrong_width_or_no_change_write_nothing(tmp_path: Path) -> None:
    model, vectors = _model()
    old = load_bundle(_bundle(tmp_path / "v1", model))
    with pytest.raises(CatalogError, match=r"the model reads 6-dim item vectors, the item encoder gave \(1, 4\)"):
        extend_bundle(old, pd.DataFrame({"item_id": ["x"], "title": ["X"]}), torch.randn(1, 4), tmp_path / "v2")
    same = pd.DataFrame({"item_id": ["i2"], "title": ["Film i2"]})
    with pytest.raises(CatalogError, match="already in the catalog with the same title and text"):
        extend_bundle(old, same, vectors[2:3], tmp_path / "v2")
    assert not (tmp_path / "v2").exists() and [p.name for p in tmp_path.iterdir()] == ["v1"]


def test_an_extended_inductive_bundle_exports_to_onnx_with_the_same_scores(tmp_path: Path) -> None:
    import onnxruntime as ort

    from lite_rec.infer.onnx_export import export_onnx

    model, _ = _model()
    old = load_bundle(_bundle(tmp_path / "v1", model))
    path, _ = extend_bundle(old, pd.DataFrame({"item_id": ["new-a"], "title": ["A New Film"]}), torch.randn(1, DIM) * 3,
                            tmp_path / "v2")
    sidecar = export_onnx(load_bundle(path), tmp_path / "m.onnx")
    assert sidecar["n_items"] == N + 1 and sidecar["item_ids"][-1] == "new-a"
    items = np.array([[N + 1, 2, 3], [4, 0, 0]], dtype=np.int64)  # (2, 3) right-padded, a new item in a history
    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"items": items})[0]  # (2, N+2)
    with torch.no_grad():
        want = Recommender(load_bundle(path)).model(torch.from_numpy(items))[0].numpy()
    assert np.allclose(got[:, 1:], want[:, 1:], atol=1e-4)
