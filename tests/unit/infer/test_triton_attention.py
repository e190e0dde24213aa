"""The Triton attention kernels (lite_rec.infer.triton_attention) compute LeanRunner's attention: the same
outputs as a plain torch reference of the mask's definition and as the plan's "bmm" path, the
flash-style kernel also across key blocks (online softmax), with causal block skipping and the
time bias it computes from each user's times.

Checked on a CPU under Triton's interpreter (TRITON_INTERPRET=1, set by tests/conftest.py before
anything imports triton); a GPU compiles the same kernel source. Needs the triton package.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from lite_rec.infer.lean_runner import LeanRunner
from lite_rec.model.rec_llm import LiteRecModel
from tests.helpers.tiny_models import tiny_model

# tests/conftest.py sets it before anything imports triton (which fixes the mode of triton's own
# library functions at import); this module fails loudly if that did not happen.
assert os.environ.get("TRITON_INTERPRET") == "1", "tests/conftest.py must set TRITON_INTERPRET=1 before triton is imported"
from lite_rec.infer import triton_attention  # noqa: E402

N_ITEMS = 30
WINDOW = 21


def _pad(rng: np.random.Generator, batch: int, t: int) -> torch.Tensor:
    """(B, T) bool padding: right-padded histories of random lengths (as batches.py and the service
    pad), then a user with no item at all (a batch-bucket filler row) and a left-padded one."""
    lengths = rng.integers(1, t + 1, batch)
    pad = torch.arange(t)[None, :] >= torch.as_tensor(lengths)[:, None]  # (B, T)
    pad[-1] = True
    if batch > 2 and t > 1:
        pad[-2] = torch.arange(t) < t // 2
    return pad


def _reference(qkv: torch.Tensor, bias: torch.Tensor, pad: torch.Tensor, heads: int, scale: float, causal: bool,
               probs_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Attention from the definition, in fp32: a key is visible when it is not padding (and not in the
    future, when causal), and a query always sees itself. `probs_dtype`: rounding of the
    probabilities before the value product (bf16 kernels multiply bf16 by bf16)."""
    (b, t), d = pad.shape, qkv.shape[1] // 3
    q, k, v = qkv.float().view(b, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, dk)
    i, j = torch.arange(t)[:, None], torch.arange(t)[None, :]  # (T, 1), (1, T)
    visible = ~pad[:, None, None, :] & ((j <= i) | (not causal))  # (B, 1, T, T)
    visible = visible | (i == j)
    scores = scale * q @ k.transpose(-1, -2) + bias.float()  # (B, H, T, T)
    probs = scores.masked_fill(~visible, float("-inf")).softmax(-1)
    out = probs.to(probs_dtype).float() @ v  # (B, H, T, dk)
    return out.transpose(1, 2).reshape(b * t, d)  # (B*T, D)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("t", [1, 5, 21])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("bias_heads", [1, 4])
def test_kernel_matches_the_definition(dtype: torch.dtype, t: int, causal: bool, bias_heads: int) -> None:
    heads, dk, batch = 4, 16, 5
    gen = torch.Generator().manual_seed(t * 10 + causal)
    qkv = torch.randn(batch * t, 3 * heads * dk, generator=gen).to(dtype)  # (B*T, 3D)
    bias = torch.randn(bias_heads, t, t, generator=gen).to(dtype)  # (1 or H, T, T)
    pad = _pad(np.random.default_rng(t), batch, t)  # (B, T)
    got = triton_attention.attention(qkv, bias, pad, heads, 0.125 * (1 + causal), causal)
    assert got.shape == (batch * t, heads * dk) and got.dtype == dtype
    want = _reference(qkv, bias, pad, heads, 0.125 * (1 + causal), causal, probs_dtype=dtype)
    if dtype == torch.float32:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    else:  # rounding of the output and of the probabilities (an ulp either way), summation order
        torch.testing.assert_close(got.float(), want, rtol=1.6e-2, atol=1e-2)


def test_padding_query_sees_only_itself() -> None:
    """A user with no item: every query is padding and sees only itself, so its output is its own value."""
    heads, dk, t = 2, 16, 5
    qkv = torch.randn(t, 3 * heads * dk)  # (T, 3D) one user
    got = triton_attention.attention(qkv, torch.zeros(1, t, t), torch.ones(1, t, dtype=torch.bool), heads, 1.0, False)
    torch.testing.assert_close(got, qkv[:, 2 * heads * dk :])


def _edge_times(batch: int, t: int, gen: torch.Generator) -> torch.Tensor:
    """(B, T) int64 Unix seconds, non-decreasing per user, whose pairwise gaps hit the edges of
    ``context.time_bucket``: 0, 1, 2**k - 1 and 2**k seconds, and gaps past 2**31 s (the top bucket)."""
    edges = [0, 1, 1, 2, 3, 4, 7, 8, 255, 256, 65535, 65536, 2**30 - 1, 2**30, 2**31 + 5]
    steps = torch.tensor([edges[i % len(edges)] for i in range(batch * t)]).view(batch, t)
    steps = steps[:, torch.randperm(t, generator=gen)]  # (B, T)
    return 1_000_000_000 + steps.cumsum(1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("t", "causal", "timed"), [(1, False, False), (5, True, False), (16, True, True),
                                                    (37, False, False), (37, True, True), (37, False, True)])
def test_flash_kernel_matches_the_definition_across_key_blocks(dtype: torch.dtype, t: int, causal: bool, timed: bool) -> None:
    """Blocks of 16 queries and keys: a 37-item window takes three key blocks (the last one partly
    outside the window), the online softmax must rescale across them; a per-user bias (the position
    bias plus the model's ``time_bucket`` bias, built by ``user_bias``) is read per user; right-padded
    rows of every length, an empty one too."""
    from lite_rec.model.context import TIME_BUCKETS, time_bucket

    heads, dk, batch = 2, 16, 4
    gen = torch.Generator().manual_seed(t + 100 * causal + 1000 * timed)
    qkv = torch.randn(batch * t, 3 * heads * dk, generator=gen).to(dtype)
    position = torch.randn(heads, t, t, generator=gen)  # (H, T, T) fp32
    bias = position[None]  # (1, H, T, T)
    if timed:  # every bucket its own clearly different value, so a wrong bucket moves the output
        table = (torch.arange(TIME_BUCKETS, dtype=torch.float32)[:, None] * torch.tensor([0.37, -0.29])).contiguous()
        times = _edge_times(batch, t, gen)  # (B, T)
        bias = bias + table[time_bucket((times[:, :, None] - times[:, None, :]).abs())].permute(0, 3, 1, 2)  # (B, H, T, T)
        shared = triton_attention.user_bias(times, position, table.t().contiguous(), dtype)  # (B, H, T, T) as the plan passes it
        if dtype != torch.float32:  # the plan reads the sum rounded once to bf16 (test_user_bias_is_the_models_... checks it)
            bias = shared.float()
    else:
        shared = position.to(dtype)  # (H, T, T)
        bias = shared[None]
    lengths = torch.tensor([t, max(t // 2, 1), 1, 0])
    pad = torch.arange(t)[None, :] >= lengths[:, None]  # (B, T) right padding
    got = triton_attention.flash_attention(qkv, shared, pad, heads, 0.3, causal, block_m=16, block_n=16)
    want = _reference(qkv, bias, pad, heads, 0.3, causal, probs_dtype=dtype)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1.6e-2, "atol": 1e-2}
    assert got.shape == (batch * t, heads * dk) and got.dtype == dtype
    torch.testing.assert_close(got.float(), want, **tol)
    if causal:  # no padding mask: a causal model's real queries never reach a right-padded key
        unmasked = triton_attention.flash_attention(qkv, shared, None, heads, 0.3, True, block_m=16, block_n=16)
        real = (~pad).reshape(-1)
        torch.testing.assert_close(unmasked.float()[real], want[real], **tol)
    if timed:  # the same scores without the times are not the same: the test sees the time bias
        plain = triton_attention.flash_attention(qkv, position.to(dtype), pad, heads, 0.3, causal, block_m=16, block_n=16)
        assert not torch.allclose(plain.float(), want, **tol)


def test_per_user_bias_inputs_are_checked() -> None:
    qkv, shared = torch.zeros(2 * 3, 3 * 32), torch.zeros(2, 3, 3)  # B = 2, T = 3, 2 heads of 16
    with pytest.raises(ValueError, match=r"a per-user bias must be \(B, H, T, T\) = \(2, 2, 3, 3\)"):
        triton_attention.flash_attention(qkv, torch.zeros(3, 2, 3, 3), None, 2, 1.0, True)
    times = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"times must be contiguous int64"):
        triton_attention.user_bias(times.float(), shared, torch.zeros(2, 32), torch.float32)
    with pytest.raises(ValueError, match=r"position must be contiguous fp32 \(H, T, T\)"):
        triton_attention.user_bias(times, shared.to(torch.bfloat16), torch.zeros(2, 32), torch.float32)
    with pytest.raises(ValueError, match=r"table must be contiguous fp32 \(2, 32\), head-major"):
        triton_attention.user_bias(times, shared, torch.zeros(32, 2), torch.float32)


def test_user_bias_is_the_models_at_every_bucket_edge() -> None:
    """Every power-of-two edge, gaps past 2**31 s (the top bucket), a window longer than one block of
    rows: the position bias plus the table's value of each pair's ``time_bucket``, in fp32 exactly and
    rounded once to bf16; an empty batch gives an empty bias."""
    from lite_rec.model.context import TIME_BUCKETS, time_bucket

    heads, t = 3, 45
    gen = torch.Generator().manual_seed(8)
    times = _edge_times(2, t, gen)  # (B, T)
    position = torch.randn(heads, t, t, generator=gen)  # (H, T, T)
    table = torch.randn(TIME_BUCKETS, heads, generator=gen)  # (TIME_BUCKETS, H) as the model stores it
    buckets = time_bucket((times[:, :, None] - times[:, None, :]).abs())  # (B, T, T)
    assert int(buckets.max()) == TIME_BUCKETS - 1 and int(buckets.min()) == 0
    want = position[None] + table[buckets].permute(0, 3, 1, 2)  # (B, H, T, T)
    got = triton_attention.user_bias(times, position, table.t().contiguous(), torch.float32)
    assert torch.equal(got, want)
    rounded = triton_attention.user_bias(times, position, table.t().contiguous(), torch.bfloat16)
    # within one bf16 step of the fp32 sum (a GPU rounds to nearest; Triton's interpreter truncates)
    torch.testing.assert_close(rounded.float(), want, rtol=2**-7, atol=0.0)
    assert triton_attention.user_bias(torch.zeros(0, t, dtype=torch.long), position, table.t().contiguous(),
                                      torch.float32).shape == (0, heads, t, t)


@pytest.mark.parametrize("parts", [2, 3])
def test_embedding_sum_is_the_models_sum_of_rows(parts: int) -> None:
    """Item row + one or two context rows (from their offsets in the stacked table), summed in fp32 in
    the model's order: exactly the torch sum in fp32, within one bf16 step rounded; a width that is
    not a power of two (block padding) and a row count that is not a multiple of the row block."""
    gen = torch.Generator().manual_seed(parts)
    n_items, n_contexts, n_gaps, d = 9, 5, 4, 24
    table = torch.randn(n_items + n_contexts + n_gaps, d, generator=gen)  # (R, D) fp32
    items = torch.randint(0, n_items, (3, 7), generator=gen)  # (B, T)
    contexts = torch.stack([torch.randint(0, n_contexts, (3, 7), generator=gen),
                            torch.randint(10**9, 2 * 10**9, (3, 7), generator=gen),
                            torch.randint(0, n_gaps, (3, 7), generator=gen)], -1)  # (B, T, 3): id, time, next gap
    columns, offsets = [0, 2][: parts - 1], [n_items, n_items + n_contexts][: parts - 1]
    want = table[items]
    for column, offset in zip(columns, offsets, strict=True):
        want = want + table[contexts[..., column] + offset]  # (B, T, D)
    got = triton_attention.embedding_sum(items, contexts, table, columns, offsets, torch.float32)
    assert torch.equal(got, want.reshape(21, d))
    rounded = triton_attention.embedding_sum(items, contexts, table, columns, offsets, torch.bfloat16)
    torch.testing.assert_close(rounded.float(), want.reshape(21, d), rtol=2**-7, atol=0.0)
    with pytest.raises(ValueError, match="contexts"):
        triton_attention.embedding_sum(items, None, table, columns, offsets, torch.float32)


def _model(causal: bool, seed: int, d_model: int = 64, n_heads: int = 2) -> LiteRecModel:
    return tiny_model(n_items=N_ITEMS, window=WINDOW, causal=causal, seed=seed, d_model=d_model, n_heads=n_heads, d_ff=96)


def _items(pad: torch.Tensor, seed: int) -> torch.Tensor:
    """(B, T) item_idx with 0 where `pad`."""
    items = torch.randint(1, N_ITEMS + 1, pad.shape, generator=torch.Generator().manual_seed(seed))
    return items.masked_fill(pad, 0)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("attention", ["triton", "flash", "auto"])
def test_runner_with_triton_attention_equals_bmm(causal: bool, attention: str) -> None:
    model = _model(causal, seed=3)
    pad = _pad(np.random.default_rng(7), 6, WINDOW)
    if causal:  # the plan's inputs are right-padded (the one left-padded row of _pad is for the kernel tests)
        pad[-2] = torch.arange(WINDOW) >= WINDOW // 2
    items = _items(pad, seed=8)  # (6, 21)
    with torch.inference_mode():
        want = LeanRunner(model, attention="bmm")(items)
        got = LeanRunner(model, attention=attention)(items)
    finite = torch.isfinite(want)
    assert torch.equal(finite, torch.isfinite(got))
    torch.testing.assert_close(got[finite], want[finite], rtol=1e-4, atol=1e-3)
    assert torch.equal(got.topk(5).indices, want.topk(5).indices)


def test_runner_with_triton_attention_in_bf16_stays_within_bf16_rounding() -> None:
    model = _model(False, seed=4)
    items = _items(_pad(np.random.default_rng(9), 6, WINDOW), seed=10)
    with torch.inference_mode():
        want, _ = model(items)  # fp32 eager model
        bmm = LeanRunner(model, torch.bfloat16, attention="bmm")(items)
        got = LeanRunner(model, torch.bfloat16, attention="triton")(items)
    finite = torch.isfinite(want)
    rel = float((got[finite] - want[finite]).norm() / want[finite].norm())
    rel_bmm = float((bmm[finite] - want[finite]).norm() / want[finite].norm())
    assert 0 < rel < 3e-2
    assert rel < 2 * rel_bmm + 1e-3  # fp32 scores inside the kernel: no worse than the bf16 bmm path


def test_unsupported_uses_are_refused_with_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="power of two"):
        LeanRunner(_model(False, seed=5, d_model=32, n_heads=4), attention="triton")  # head size 8
    qkv, pad = torch.randn(10, 96), torch.zeros(2, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match="contiguous"):
        triton_attention.attention(qkv, torch.zeros(1, 5, 5).transpose(1, 2), pad, 2, 1.0, False)
    with pytest.raises(ValueError, match="bias must be"):
        triton_attention.attention(qkv, torch.zeros(3, 5, 5), pad, 2, 1.0, False)
    with pytest.raises(TypeError, match="bool"):
        triton_attention.attention(qkv, torch.zeros(1, 5, 5), pad.long(), 2, 1.0, False)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="CUDA"):
        LeanRunner(_model(False, seed=5), attention="triton")


@pytest.mark.parametrize(("causal", "pooling"), [(True, "last"), (False, "last"), (True, "mean")])
def test_runner_computes_the_time_bias_in_the_kernel_as_the_model_does(causal: bool, pooling: str) -> None:
    """A model reading every context (``time_bias``, gaps, ratings, query time) through the Triton plan
    (each user's bias built once and read by the flash kernel, the top layer its one row; the inputs
    summed by ``embedding_sum``) gives the model's scores: a 37-item window, gaps at every bucket
    edge, right-padded rows of every length and an empty one."""
    from lite_rec.core.model_config import ModelConfig
    from lite_rec.model.context import CONTEXT_COLUMNS, CONTEXT_ID, CONTEXT_NEXT_GAP, CONTEXT_TIME
    from lite_rec.model.rec_llm import build_model

    t, batch = 37, 5
    torch.manual_seed(5 + causal)
    cfg = ModelConfig(backbone="lean", pretrained=False, d_model=32, n_layers=2, n_heads=2, d_ff=48, dropout=0.0,
                      max_seq_len=t, item_repr="text+id", pooling=pooling, time_bias=True, time_gaps=True, ratings=True,
                      query_time=True)
    vectors = torch.randn(N_ITEMS + 1, 6)
    vectors[0] = 0
    model, _ = build_model(cfg, N_ITEMS, vectors, causal=causal)
    with torch.no_grad():
        model.head.weight.mul_(20.0)
        model.time_bias.weight.normal_(0.0, 2.0)  # training starts it at zero
        model.query_gap_embedding.weight[1:].normal_(0.0, 1.0)
        model.context_embedding.weight[1:].normal_(0.0, 1.0)
    model.eval()
    lengths = torch.tensor([t, 20, 16, 1, 0])
    pad = torch.arange(t)[None, :] >= lengths[:, None]  # (B, T) right padding, an empty row too
    items = _items(pad, seed=11)
    contexts = torch.zeros(batch, t, CONTEXT_COLUMNS, dtype=torch.long)
    contexts[..., CONTEXT_TIME] = _edge_times(batch, t, torch.Generator().manual_seed(3)).masked_fill(pad, 0)
    gen = torch.Generator().manual_seed(4)  # context ids and next-gap indices: 0 on padding, as the recommender pads
    n_ids, n_gaps = model.context_embedding.num_embeddings, model.query_gap_embedding.num_embeddings
    contexts[..., CONTEXT_ID] = torch.randint(1, n_ids, (batch, t), generator=gen).masked_fill(pad, 0)
    contexts[..., CONTEXT_NEXT_GAP] = torch.randint(0, n_gaps, (batch, t), generator=gen).masked_fill(pad, 0)
    with torch.inference_mode():
        want, _ = model(items, contexts=contexts)
        flash = LeanRunner(model, attention="flash")
        got = flash(items, contexts)
        assert torch.equal(LeanRunner(model, attention="sdpa")(items, contexts).topk(5).indices, want.topk(5).indices)
        same_time = contexts.clone()
        same_time[..., CONTEXT_TIME] = contexts[..., CONTEXT_TIME].masked_fill(~pad, 7)  # every gap 0: bucket 0 throughout
        untimed = flash(items, same_time)
    finite = torch.isfinite(want)
    assert torch.equal(finite, torch.isfinite(got))
    torch.testing.assert_close(got[finite], want[finite], rtol=1e-4, atol=1e-3)
    assert torch.equal(got.topk(5).indices, want.topk(5).indices)
    assert not torch.allclose(untimed[finite], want[finite], rtol=1e-4, atol=1e-3)
