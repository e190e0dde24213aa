"""The fast path computes the same function as the model: same logits on CPU, same top-k as the
plain Recommender, padding cut to length buckets without changing a score."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lite_rec.infer.bundle import load_bundle
from lite_rec.infer.fast_path import (
    FastModel,
    FastPathOptions,
    bucket_for,
    cast_backbone,
    choose_device,
    configure_threads,
    fast_recommender,
    resolve_cuda_attention,
)
from lite_rec.infer.recommender import Recommender
from lite_rec.model.rec_llm import LiteRecModel
from tests.helpers.tiny_models import save_tiny_bundle, tiny_model

N_ITEMS = 40
WINDOW = 8
IDS = [f"it{i}" for i in range(1, N_ITEMS + 1)]


def _model(backbone: str = "lean", item_repr: str = "text", causal: bool = False, seed: int = 0,
           pooling: str = "mean") -> LiteRecModel:
    return tiny_model(n_items=N_ITEMS, window=WINDOW, backbone=backbone, item_repr=item_repr, causal=causal, seed=seed,
                      pooling=pooling)


def _bundle(tmp_path: Path, model: LiteRecModel, name: str) -> Path:
    return save_tiny_bundle(tmp_path / name, model, IDS, [f"T{i}" for i in IDS])


def _padded(rng: np.random.Generator, batch: int, max_len: int = WINDOW) -> torch.Tensor:
    """(B, WINDOW) right-padded histories of random lengths 1..max_len."""
    items = torch.zeros(batch, WINDOW, dtype=torch.long)
    for b in range(batch):
        n = int(rng.integers(1, max_len + 1))
        items[b, :n] = torch.as_tensor(rng.choice(np.arange(1, N_ITEMS + 1), n, replace=False))
    return items


def test_bucket_for_picks_the_smallest_bucket_that_fits() -> None:
    assert bucket_for(1, (8, 1, 32)) == 1
    assert bucket_for(2, (1, 8, 32)) == 8
    assert bucket_for(32, (1, 8, 32)) == 32
    assert bucket_for(33, (1, 8, 32)) is None


def test_choose_device() -> None:
    assert choose_device("cpu") == torch.device("cpu")
    assert choose_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("tpu", "banana", "mps"):
        with pytest.raises(ValueError, match="device"):
            choose_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            choose_device("cuda:0")


def test_configure_threads_sets_and_zero_keeps() -> None:
    before = torch.get_num_threads()
    try:
        assert configure_threads(1) == 1 and torch.get_num_threads() == 1
        assert configure_threads(0) == 1  # 0 leaves the current setting alone
    finally:
        torch.set_num_threads(before)


def test_trim_cuts_trailing_padding_to_the_next_length_bucket() -> None:
    fast = FastModel(_model(), "cpu", FastPathOptions(length_buckets=(2, 5)))
    assert fast.length_buckets == (2, 5, WINDOW)  # the window is always a bucket
    items = torch.zeros(3, WINDOW, dtype=torch.long)
    items[0, :3] = torch.tensor([4, 5, 6])
    items[1, :1] = torch.tensor([7])
    assert fast.trim(items).shape == (3, 5)
    items[2, :6] = torch.arange(1, 7)
    assert fast.trim(items).shape == (3, WINDOW)
    assert fast.trim(items[:2, :]).shape == (2, 5)
    assert fast.trim(torch.tensor([[3, 0, 0, 0, 0, 0, 0, 0]])).shape == (1, 2)


@pytest.mark.parametrize(("backbone", "item_repr", "causal"), [("lean", "text", False), ("t5-small", "text+id", False),
                                                              ("lean", "id", True)])
def test_padding_cut_does_not_change_scores(backbone: str, item_repr: str, causal: bool) -> None:
    """Length buckets only remove work: logits equal the full-window model's to fp32 rounding."""
    model = _model(backbone, item_repr, causal)
    fast = FastModel(_model(backbone, item_repr, causal), "cpu", FastPathOptions(length_buckets=(2, 4)))
    items = _padded(np.random.default_rng(1), 16, max_len=4)
    with torch.inference_mode():
        want, _ = model(items)  # (B, N+1)
        got, none = fast(items)
    assert none is None and got.shape == want.shape == (16, N_ITEMS + 1)
    finite = torch.isfinite(want)
    assert torch.equal(finite, torch.isfinite(got))  # padding column stays -inf
    torch.testing.assert_close(got[finite], want[finite], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("backbone", ["lean", "t5-small"])
def test_fast_recommender_gives_the_same_top_k_as_the_recommender(tmp_path: Path, backbone: str) -> None:
    path = _bundle(tmp_path, _model(backbone), f"b-{backbone}")
    plain = Recommender.from_path(path)
    fast = fast_recommender(load_bundle(path), "cpu", FastPathOptions(length_buckets=(3, 5)))
    assert isinstance(fast.model, FastModel) and fast.device.type == "cpu"
    rng = np.random.default_rng(7)
    histories = [[IDS[i] for i in rng.choice(N_ITEMS, int(rng.integers(0, 14)), replace=False)] for _ in range(60)]
    for exclude in (True, False):
        want = plain.recommend(histories, k=10, exclude_history=exclude)
        got = fast.recommend(histories, k=10, exclude_history=exclude)
        for w, g in zip(want, got, strict=True):
            assert g.item_ids == w.item_ids
            assert g.scores == pytest.approx(w.scores, abs=1e-4)
            assert g.fallback == w.fallback
    # one user at a time (the service's usual call) gives the batch's answer
    single = [fast.recommend([h], k=10)[0].item_ids for h in histories[:10]]
    assert single == [r.item_ids for r in plain.recommend(histories[:10], k=10)]


def test_fast_model_is_inference_only() -> None:
    fast = FastModel(_model(), "cpu")
    with pytest.raises(ValueError, match="inference-only"):
        fast(torch.ones(2, WINDOW, dtype=torch.long), torch.ones(2, dtype=torch.long))
    assert fast.graph_shapes == [] and fast.bf16 is False  # no graphs, no bf16 on CPU


def test_bf16_backbone_keeps_fp32_inputs_and_head() -> None:
    """The CUDA cast, exercised on CPU: backbone weights bf16, item inputs and logits fp32,
    scores within bf16 precision of the fp32 model."""
    ref = _model()
    cast = cast_backbone(_model(), torch.bfloat16)
    assert cast_backbone(cast) is cast  # idempotent: no double wrapping
    dtypes = {name: p.dtype for name, p in cast.backbone.named_parameters()}
    assert {d for n, d in dtypes.items() if "norm" not in n} == {torch.bfloat16}
    assert {d for n, d in dtypes.items() if "norm" in n} == {torch.float32}  # lean norms compute in fp32
    assert cast.head.weight.dtype == torch.float32 and cast.item_vectors.dtype == torch.float32
    items = _padded(np.random.default_rng(3), 8)
    with torch.inference_mode():
        want, _ = ref(items)
        got, _ = cast(items)
    assert got.dtype == torch.float32
    finite = torch.isfinite(want)
    rel = (got[finite] - want[finite]).norm() / want[finite].norm()
    assert 0 < rel < 3e-2  # changed (it is bf16), but only by bf16 rounding


@pytest.mark.parametrize(("backbone", "item_repr", "causal", "pooling"), [
    ("lean", "text", False, "mean"), ("t5-small", "text", False, "mean"),
    ("t5-small", "id", True, "mean"), ("lean", "text+id", False, "mean"),
    ("lean", "text", False, "last"), ("t5-small", "text", True, "last"),
    ("lean", "text+id", True, "last"), ("lean", "id", False, "mean"),
])
def test_lean_plan_computes_the_models_function(backbone: str, item_repr: str, causal: bool, pooling: str) -> None:
    """The re-planned step (precomputed item table, cached position bias, fused norms and
    residuals; HF T5 weights mapped into the lean layout) equals the model's forward, with the
    model's attention scale (random lean starts use 1/sqrt(dk), T5 1), pooling and head."""
    kw = dict(seed=11, pooling=pooling)
    model = _model(backbone, item_repr, causal, **kw)
    planned = FastModel(_model(backbone, item_repr, causal, **kw), "cpu")
    generic = FastModel(_model(backbone, item_repr, causal, **kw), "cpu", FastPathOptions(lean_plan=False))
    assert planned.runner is not None and generic.runner is None
    items = _padded(np.random.default_rng(2), 12)
    with torch.inference_mode():
        want, _ = model(items)
        for fast in (planned, generic):
            got, _ = fast(items)
            finite = torch.isfinite(want)
            assert torch.equal(finite, torch.isfinite(got))
            torch.testing.assert_close(got[finite], want[finite], rtol=1e-4, atol=1e-3)
            assert torch.equal(got.topk(5).indices, want.topk(5).indices)


def test_lean_plan_in_bf16_stays_within_bf16_rounding() -> None:
    model = _model(seed=12)
    from lite_rec.infer.lean_runner import LeanRunner

    runner = LeanRunner(_model(seed=12), torch.bfloat16)
    assert runner.table.dtype == torch.bfloat16 and runner.head_weight.dtype == torch.float32
    items = _padded(np.random.default_rng(4), 8)
    with torch.inference_mode():
        want, _ = model(items)
        got = runner(items)
    assert got.dtype == torch.float32
    finite = torch.isfinite(want)
    rel = (got[finite] - want[finite]).norm() / want[finite].norm()
    assert 0 < rel < 3e-2


@pytest.mark.parametrize("causal", [False, True])
def test_lean_plan_bmm_attention_equals_sdpa(causal: bool) -> None:
    """The batched-matmul attention (bias fused into the score GEMM) is the same attention."""
    from lite_rec.infer.lean_runner import LeanRunner

    model = _model(causal=causal, seed=13)
    items = _padded(np.random.default_rng(6), 9)
    with torch.inference_mode():
        want, _ = model(items)
        got = LeanRunner(model, attention="bmm")(items)
    finite = torch.isfinite(want)
    assert torch.equal(finite, torch.isfinite(got))
    torch.testing.assert_close(got[finite], want[finite], rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="attention"):
        LeanRunner(model, attention="flash")


def test_auto_attention_picks_triton_only_where_its_kernel_can_tile_the_heads(caplog: pytest.LogCaptureFixture) -> None:
    """`auto` = the fused Triton kernel (fastest measured) where it runs, else `bmm` with the reason
    logged; explicit choices pass through. On this CPU the kernel (and the trial launch of
    `triton_attention.check_runs`) runs under Triton's interpreter (tests/conftest.py), so the head
    size decides here."""
    cpu = torch.device("cpu")
    head16 = tiny_model(n_items=N_ITEMS, window=WINDOW, d_model=32, n_heads=2)  # head size 16: tileable
    head8 = tiny_model(n_items=N_ITEMS, window=WINDOW, d_model=16, n_heads=2)  # head size 8: too small
    assert resolve_cuda_attention("auto", cpu, head16) == "triton"
    with caplog.at_level("INFO", logger="lite_rec.infer.fast_path"):
        assert resolve_cuda_attention("auto", cpu, head8) == "bmm"
    assert "power of two" in caplog.text
    for explicit in ("bmm", "sdpa", "triton"):
        assert resolve_cuda_attention(explicit, cpu, head8) == explicit
