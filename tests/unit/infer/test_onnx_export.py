"""The ONNX export (lite_rec.infer.onnx_export, `lite-rec export`): ONNX Runtime on a CPU gives our scores
(within 1e-4) and our top-k (the same ids) for every batch size and history length, padding
included, with and without per-item contexts; the sidecar says what a server needs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lite_rec.core.errors import DataError
from lite_rec.infer.bundle import load_bundle
from lite_rec.infer.onnx_export import OPSET, export_onnx, sidecar_path
from lite_rec.model.rec_llm import LiteRecModel
from tests.helpers.tiny_models import save_tiny_bundle, tiny_model

ort = pytest.importorskip("onnxruntime")

N_ITEMS = 40
WINDOW = 12
IDS = [f"it{i}" for i in range(1, N_ITEMS + 1)]
SHAPES = [(1, 1), (1, WINDOW), (3, 5), (8, WINDOW), (17, 7)]  # (batch, length)


def _batch(rng: np.random.Generator, batch: int, length: int) -> np.ndarray:
    """(B, T) right-padded histories of random lengths 1..T (distinct items per user)."""
    items = np.zeros((batch, length), np.int64)
    for b in range(batch):
        n = int(rng.integers(1, length + 1))
        items[b, :n] = rng.choice(np.arange(1, N_ITEMS + 1), n, replace=False)
    return items


def _contexts(rng: np.random.Generator, items: np.ndarray) -> np.ndarray:
    rows = np.zeros((*items.shape, 3), np.int64)
    rows[..., 0] = rng.integers(1, 51, items.shape)
    rows[..., 1] = np.sort(rng.integers(0, 10**9, items.shape), axis=1)
    rows[..., 2] = rng.integers(0, 10, items.shape)
    return np.where(items[..., None] > 0, rows, 0)


def _check(model: LiteRecModel, path: Path, k: int, contexts: bool = False) -> None:
    """ORT vs the eager model: scores within 1e-4, the same top-k ids (window items masked)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for batch, length in SHAPES:
        items = _batch(rng, batch, length)
        feed = {"items": items}
        ctx = None
        if contexts:
            feed["contexts"] = _contexts(rng, items)
            ctx = torch.as_tensor(feed["contexts"])
        got = session.run(None, feed)
        with torch.no_grad():
            want = model(torch.as_tensor(items), contexts=ctx)[0]  # (B, N+1)
        scores = torch.as_tensor(got[0])
        assert scores.shape == (batch, N_ITEMS + 1) and scores.dtype == torch.float32
        finite = torch.isfinite(want)
        assert torch.equal(finite, torch.isfinite(scores))  # column 0 (padding) is -inf in both
        torch.testing.assert_close(scores[finite], want[finite], rtol=0, atol=1e-4)
        if k:
            top = want.scatter(1, torch.as_tensor(items), float("-inf")).topk(k)
            assert np.array_equal(got[2], top.indices.numpy()), (batch, length)
            torch.testing.assert_close(torch.as_tensor(got[1]), top.values, rtol=0, atol=1e-4)


@pytest.mark.parametrize(("backbone", "causal", "pooling", "k"), [
    ("lean", True, "last", 10),  # the shipped shape: causal, last position, text+id
    ("lean", False, "mean", 0),  # scores only
])
def test_onnx_runtime_gives_our_scores_and_top_k(tmp_path: Path, backbone: str, causal: bool, pooling: str, k: int) -> None:
    model = tiny_model(n_items=N_ITEMS, window=WINDOW, backbone=backbone, item_repr="text+id", causal=causal, pooling=pooling)
    bundle = save_tiny_bundle(tmp_path / "bundle", model, IDS)
    side = export_onnx(load_bundle(bundle), tmp_path / "model.onnx", top_k=k)
    _check(model, tmp_path / "model.onnx", k)
    saved = json.loads(sidecar_path(tmp_path / "model.onnx").read_text())
    assert saved == json.loads(json.dumps(side))
    assert saved["opset"] == OPSET and saved["max_seq_len"] == WINDOW and saved["item_ids"] == IDS
    assert [i["name"] for i in saved["inputs"]] == ["items"]
    assert [o["name"] for o in saved["outputs"]] == (["scores", "top_scores", "top_items"] if k else ["scores"])
    assert saved["dynamic_axes"] == ["batch", "length"] and saved["history_logit"] is None


def test_a_context_model_takes_its_contexts_as_a_second_input(tmp_path: Path) -> None:
    from lite_rec.core.model_config import ModelConfig
    from lite_rec.model.rec_llm import build_model

    torch.manual_seed(3)
    cfg = ModelConfig(backbone="lean", pretrained=False, d_model=16, n_layers=2, n_heads=2, d_ff=32, dropout=0.0,
                      max_seq_len=WINDOW, item_repr="text+id", pooling="last", history_logit=True,
                      time_gaps=True, ratings=True, time_bias=True, query_time=True)
    vectors = torch.randn(N_ITEMS + 1, 6)
    vectors[0] = 0
    model, _ = build_model(cfg, N_ITEMS, vectors, causal=True)
    with torch.no_grad():
        model.head.weight.mul_(20.0)
        for name, p in model.named_parameters():
            if name.split(".")[0] in ("time_bias", "query_gap_embedding", "history_logit_param"):
                p.normal_()
    model.eval()
    bundle = save_tiny_bundle(tmp_path / "bundle", model, IDS)
    side = export_onnx(load_bundle(bundle), tmp_path / "ctx.onnx", top_k=5)
    assert [i["name"] for i in side["inputs"]] == ["items", "contexts"]
    assert side["history_logit"] == pytest.approx(float(model.history_logit().detach()))
    _check(model, tmp_path / "ctx.onnx", 5, contexts=True)


def test_the_cli_exports_a_bundle_and_refuses_a_top_k_beyond_the_catalogue(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from lite_rec_flows.cli import main

    model = tiny_model(n_items=N_ITEMS, window=WINDOW, item_repr="id", causal=True, pooling="last")
    bundle = save_tiny_bundle(tmp_path / "bundle", model, IDS)
    assert main(["export", str(bundle), "--out", str(tmp_path / "out" / "m.onnx"), "--top-k", "3"]) == 0
    printed = capsys.readouterr().out
    assert "opset 18" in printed and "top_items int64" in printed and "m.onnx.json" in printed
    _check(model, tmp_path / "out" / "m.onnx", 3)
    assert main(["export", str(bundle), "--out", str(tmp_path / "x.onnx"), "--top-k", str(N_ITEMS + 1)]) == 2
    assert "--top-k must be between 0 and the catalogue's 40 items" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing"), "--out", str(tmp_path / "y.onnx")]) == 2
    assert "no bundle directory there" in capsys.readouterr().err
    with pytest.raises(DataError, match="--top-k"):
        export_onnx(load_bundle(bundle), tmp_path / "z.onnx", top_k=-1)
