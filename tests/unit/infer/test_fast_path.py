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


def test_auto_attention_keeps_the_triton_kernels_only_where_they_can_tile_the_heads(caplog: pytest.LogCaptureFixture) -> None:
    """`auto` stays `auto` (LeanRunner picks a Triton kernel or SDPA per window) where the kernels run,
    else `sdpa` with the reason logged; explicit choices pass through. On this CPU the kernel (and
    the trial launch of `triton_attention.check_runs`) runs under Triton's interpreter
    (tests/conftest.py), so the head size decides here."""
    cpu = torch.device("cpu")
    head16 = tiny_model(n_items=N_ITEMS, window=WINDOW, d_model=32, n_heads=2)  # head size 16: tileable
    head8 = tiny_model(n_items=N_ITEMS, window=WINDOW, d_model=16, n_heads=2)  # head size 8: too small
    assert resolve_cuda_attention("auto", cpu, head16) == "auto"
    with caplog.at_level("INFO", logger="lite_rec.infer.fast_path"):
        assert resolve_cuda_attention("auto", cpu, head8) == "sdpa"
    assert "power of two" in caplog.text
    for explicit in ("bmm", "sdpa", "triton", "flash"):
        assert resolve_cuda_attention(explicit, cpu, head8) == explicit


def test_auto_attention_picks_the_kernel_by_window() -> None:
    """The one-tile kernel for short windows, the flash-style one up to 128 items, SDPA above; a
    per-user time bias always goes to the flash-style kernel (the only one that reads it)."""
    from lite_rec.infer.lean_runner import FLASH_MAX_LEN, TILE_MAX_LEN, LeanRunner

    runner = LeanRunner(tiny_model(n_items=N_ITEMS, window=WINDOW, d_model=32, n_heads=2), attention="auto")
    assert [runner._mode(t) for t in (1, TILE_MAX_LEN, TILE_MAX_LEN + 1, FLASH_MAX_LEN, FLASH_MAX_LEN + 1, 200)] == [
        "triton", "triton", "flash", "flash", "sdpa", "sdpa"]
    timed = LeanRunner(_context_model(causal=True, pooling="last", features=("time_bias",), d_model=32), attention="auto")
    assert {timed._mode(t) for t in (5, 100, 200)} == {"flash"}
    assert LeanRunner(_context_model(causal=True, pooling="last", features=("time_bias",), d_model=32), attention="triton").attention == "flash"


# ---------------------------------------------------------------------------------------------
# The plan for long windows: the top layer at the last position only, one causal mask, contexts

FEATURES = ("time_gaps", "ratings", "time_bias", "query_time")


def _context_model(causal: bool, pooling: str, features: tuple[str, ...] = FEATURES, seed: int = 21, d_model: int = 16,
                   window: int = WINDOW) -> LiteRecModel:
    """A text+id model reading `features`; their tables drawn at random (training starts them at zero)."""
    from lite_rec.core.model_config import ModelConfig
    from lite_rec.model.rec_llm import build_model

    torch.manual_seed(seed)
    cfg = ModelConfig(backbone="lean", pretrained=False, d_model=d_model, n_layers=2, n_heads=2, d_ff=32, dropout=0.0,
                      max_seq_len=window, item_repr="text+id", pooling=pooling, history_logit=True,
                      **{f: True for f in features})
    vectors = torch.randn(N_ITEMS + 1, 6)
    vectors[0] = 0
    model, _ = build_model(cfg, N_ITEMS, vectors, causal=causal)
    with torch.no_grad():
        model.head.weight.mul_(20.0)
        for name, p in model.named_parameters():
            if name.split(".")[0] in ("time_bias", "query_gap_embedding", "context_embedding", "history_logit_param"):
                p.normal_()
    return model.eval()


def _contexts(items: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """(B, T, 3) context rows for right-padded `items`: ids, increasing Unix times, next-gap indices; 0 at padding."""
    b, t = items.shape
    rows = torch.zeros(b, t, 3, dtype=torch.long)
    rows[..., 0] = torch.as_tensor(rng.integers(1, 11, (b, t)))  # valid with time_gaps alone (11 rows) or with ratings
    rows[..., 1] = torch.as_tensor(np.sort(rng.integers(0, 10**9, (b, t)), axis=1))
    rows[..., 2] = torch.as_tensor(rng.integers(0, 10, (b, t)))
    return rows.masked_fill((items == 0)[..., None], 0)


def _assert_same_scores(got: torch.Tensor, want: torch.Tensor, k: int = 5) -> None:
    finite = torch.isfinite(want)
    assert torch.equal(finite, torch.isfinite(got))
    torch.testing.assert_close(got[finite], want[finite], rtol=1e-4, atol=1e-3)
    assert torch.equal(got.topk(k).indices, want.topk(k).indices)


@pytest.mark.parametrize("pooling", ["last", "mean"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("features", [(), FEATURES, ("time_gaps",), ("time_bias",), ("query_time",)])
def test_fast_model_gives_the_models_scores_with_and_without_contexts(pooling: str, causal: bool, features: tuple[str, ...]) -> None:
    """FastModel(items, contexts=...) = LiteRecModel(items, contexts=...) on right-padded batches of
    every length (an empty row too, as batch buckets pad), for every context input."""
    model = _context_model(causal, pooling, features)
    fast = FastModel(_context_model(causal, pooling, features), "cpu", FastPathOptions(length_buckets=(3, 5)))
    assert fast.runner is not None and fast.runner.last_only == (pooling == "last")
    rng = np.random.default_rng(len(features) + 2 * causal)
    items = _padded(rng, 10)
    items[-1] = 0  # a row with no item
    contexts = _contexts(items, rng) if features else None
    with torch.inference_mode():
        want, _ = model(items, contexts=contexts)
        got, _ = fast(items, contexts=contexts)
        _assert_same_scores(got, want)
        short, _ = fast(items[:, :4], contexts=None if contexts is None else contexts[:, :4])  # fewer columns than the window
        _assert_same_scores(short, model(items[:, :4], contexts=None if contexts is None else contexts[:, :4])[0])


@pytest.mark.parametrize("attention", ["sdpa", "bmm"])
@pytest.mark.parametrize("causal", [True, False])
def test_last_position_plan_equals_the_previous_plan(attention: str, causal: bool) -> None:
    """The top layer at the last position only (and one mask for a causal batch, residuals in place)
    computes what every layer at every position computed."""
    from lite_rec.infer.lean_runner import LeanRunner

    model = _model(item_repr="text+id", causal=causal, seed=14, pooling="last")
    new, old = LeanRunner(model, attention=attention), LeanRunner(model, attention=attention, previous=True)
    assert new.last_only and not old.last_only
    items = _padded(np.random.default_rng(8), 11)
    with torch.inference_mode():
        _assert_same_scores(new(items), old(items))
        _assert_same_scores(new(items), model(items)[0])


def test_contexts_are_required_where_the_model_reads_them_and_ignored_elsewhere() -> None:
    fast = FastModel(_context_model(True, "last"), "cpu")
    items = _padded(np.random.default_rng(5), 3)
    with pytest.raises(ValueError, match=r"reads an input context .* got none"):
        fast(items)
    with pytest.raises(ValueError, match=r"got shape \(3, 8\)"):
        fast(items, contexts=items)
    plain = FastModel(_model(), "cpu")
    with torch.inference_mode():
        torch.testing.assert_close(plain(items, contexts=torch.ones(3, WINDOW, 3, dtype=torch.long))[0], plain(items)[0])


def test_a_backbone_without_a_plan_reads_contexts_through_the_model_and_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    model = _context_model(False, "mean", ("time_gaps", "ratings"))
    with caplog.at_level("WARNING", logger="lite_rec.infer.fast_path"):
        fast = FastModel(_context_model(False, "mean", ("time_gaps", "ratings")), "cpu", FastPathOptions(lean_plan=False))
    assert fast.runner is None and caplog.text.count("the model itself reads the contexts") == 1
    rng = np.random.default_rng(3)
    items = _padded(rng, 6)
    contexts = _contexts(items, rng)
    with torch.inference_mode():
        _assert_same_scores(fast(items, contexts=contexts)[0], model(items, contexts=contexts)[0])


def test_a_batch_that_is_not_right_padded_is_scored_by_the_model_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    model = _model(causal=True, seed=15, pooling="last")
    fast = FastModel(_model(causal=True, seed=15, pooling="last"), "cpu")
    items = torch.tensor([[0, 0, 3, 4, 5, 0, 0, 0], [6, 7, 0, 0, 0, 0, 0, 0]])  # row 0: padding first
    with caplog.at_level("WARNING", logger="lite_rec.infer.fast_path"), torch.inference_mode():
        for _ in range(2):
            _assert_same_scores(fast(items)[0], model(items)[0], k=3)
    assert caplog.text.count("not right-padded") == 1


def test_history_adds_the_learned_history_score_as_the_model_does() -> None:
    model = _context_model(True, "last", ())
    fast = FastModel(_context_model(True, "last", ()), "cpu")
    items = _padded(np.random.default_rng(9), 5)
    history = torch.cat([items, torch.randint(1, N_ITEMS + 1, (5, 3))], 1)  # (B, H): more than the window
    with torch.inference_mode():
        want, _ = model(items, history=history)
        got, _ = fast(items, history=history)
        _assert_same_scores(got, want)
        assert not torch.allclose(got[torch.isfinite(got)], fast(items)[0][torch.isfinite(got)])


def test_exact_trim_without_graphs() -> None:
    fast = FastModel(_model(), "cpu", FastPathOptions(length_buckets=(2, 5)))
    items = torch.zeros(2, WINDOW, dtype=torch.long)
    items[0, :3] = torch.tensor([4, 5, 6])
    assert fast.trim(items, exact=True).shape == (2, 3) and fast.trim(items).shape == (2, 5)
