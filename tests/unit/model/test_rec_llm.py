"""The recommendation LLM + head: shapes, padding invariance, causality, onepass == per prefix."""

from __future__ import annotations

import pytest
import torch

from lite_rec.core.config import ModelConfig
from lite_rec.core.errors import DataError
from lite_rec.model.rec_llm import IGNORE_INDEX, LiteRecModel, build_model, model_from_spec

N_ITEMS, ITEM_DIM = 12, 24


def _vectors(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(N_ITEMS + 1, ITEM_DIM, generator=g)  # (N+1, D_item)
    v[0] = 0
    return v


def _model(backbone: str = "lean", causal: bool = False, item_repr: str = "text", **kw) -> LiteRecModel:
    torch.manual_seed(0)
    cfg = ModelConfig(backbone=backbone, pretrained=False, d_model=16, n_layers=1, n_heads=2, d_ff=32,
                      dropout=0.2, item_repr=item_repr, max_seq_len=6, **kw)
    model, _ = build_model(cfg, N_ITEMS, _vectors() if "text" in item_repr else None, causal=causal)
    return model.eval()


BACKBONES = [("lean", False), ("lean", True), ("t5-small", False), ("t5-small", True)]


@pytest.mark.parametrize("item_repr", ["text", "id", "text+id"])
def test_scores_cover_every_item_and_never_the_padding(item_repr: str) -> None:
    model = _model(item_repr=item_repr, head_bias=True)
    logits, loss = model(torch.tensor([[3, 5, 2, 0], [1, 0, 0, 0]]))
    assert logits.shape == (2, N_ITEMS + 1) and loss is None
    assert torch.isneginf(logits[:, 0]).all() and torch.isfinite(logits[:, 1:]).all()


def test_adapter_only_where_item_vectors_are_narrower_or_wider_than_the_model() -> None:
    assert isinstance(_model().adapter, torch.nn.Linear)
    cfg = ModelConfig(backbone="lean", pretrained=False, d_model=24, n_layers=1, n_heads=2, d_ff=32)
    model, _ = build_model(cfg, N_ITEMS, _vectors(), causal=False)
    assert isinstance(model.adapter, torch.nn.Identity)


@pytest.mark.parametrize("pooling", ["mean", "last"])
@pytest.mark.parametrize(("backbone", "causal"), BACKBONES)
def test_padding_does_not_change_scores(backbone: str, causal: bool, pooling: str) -> None:
    model = _model(backbone, causal, pooling=pooling)
    history = [3, 5, 2, 7]
    with torch.no_grad():
        bare, _ = model(torch.tensor([history]))
        right, _ = model(torch.tensor([history + [0, 0, 0]]))
        left, _ = model(torch.tensor([[0, 0] + history]))
        batch, _ = model(torch.tensor([history + [0, 0], [1, 2, 3, 4, 5, 6]]))  # beside a longer user
    for other in (right, left, batch[:1]):
        torch.testing.assert_close(other, bare, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backbone", ["lean", "t5-small"])
def test_onepass_prefix_logits_never_see_later_items(backbone: str) -> None:
    model = _model(backbone, causal=True)
    a = torch.tensor([[3, 5, 2, 7, 9, 0]])
    b = torch.tensor([[3, 5, 2, 1, 4, 0]])  # differs from position 3 on
    with torch.no_grad():
        la = model.item_logits(model.prefix_user_vectors(a))  # (1, T, N+1)
        lb = model.item_logits(model.prefix_user_vectors(b))
    torch.testing.assert_close(la[:, :3], lb[:, :3], atol=0, rtol=0)
    assert not torch.allclose(la[:, 3], lb[:, 3])


@pytest.mark.parametrize("pooling", ["mean", "last"])
@pytest.mark.parametrize("backbone", ["lean", "t5-small"])
def test_onepass_prefix_outputs_equal_one_pass_per_prefix(backbone: str, pooling: str) -> None:
    model = _model(backbone, causal=True, pooling=pooling)
    seq = [3, 5, 2, 7, 9]
    with torch.no_grad():
        every = model.item_logits(model.prefix_user_vectors(torch.tensor([seq + [0]])))  # (1, T, N+1)
        for t in range(1, len(seq) + 1):
            alone, _ = model(torch.tensor([seq[:t]]))  # the `all` sample of this prefix
            torch.testing.assert_close(every[:, t - 1], alone, atol=1e-5, rtol=1e-5)


def test_onepass_loss_is_the_mean_cross_entropy_over_supervised_positions() -> None:
    model = _model(causal=True)
    items = torch.tensor([[3, 5, 2, 0]])
    targets = torch.tensor([[5, 2, IGNORE_INDEX, IGNORE_INDEX]])
    with torch.no_grad():
        logits, loss = model(items, targets)
    assert logits.shape == (1, 4, N_ITEMS + 1)
    expected = -(logits[0, 0].log_softmax(-1)[5] + logits[0, 1].log_softmax(-1)[2]) / 2
    torch.testing.assert_close(loss, expected)


def test_bidirectional_model_refuses_prefix_pooling() -> None:
    with pytest.raises(ValueError, match="onepass"):
        _model().prefix_user_vectors(torch.tensor([[1, 2]]))


def test_text_models_need_well_formed_item_vectors() -> None:
    cfg = ModelConfig(backbone="lean", pretrained=False, d_model=16, n_layers=1, n_heads=2, d_ff=32)
    with pytest.raises(DataError, match="needs item vectors"):
        build_model(cfg, N_ITEMS, None, causal=False)
    with pytest.raises(DataError, match=r"expected \(13, D\)"):
        build_model(cfg, N_ITEMS, _vectors()[:5], causal=False)
    bad = _vectors()
    bad[0, 3] = 1.0
    with pytest.raises(DataError, match="row 0"):
        build_model(cfg, N_ITEMS, bad, causal=False)


def test_unfrozen_item_vectors_train_and_keep_their_state_dict_key() -> None:
    model = _model()
    assert "item_vectors" not in dict(model.named_parameters())
    model.unfreeze_item_vectors()
    assert model.item_vectors_trainable and dict(model.named_parameters())["item_vectors"].requires_grad
    torch.testing.assert_close(model.item_vectors.detach(), _vectors())
    model.train()
    _, loss = model(torch.tensor([[3, 5]]), torch.tensor([2]))
    loss.backward()
    assert model.item_vectors.grad[3].abs().sum() > 0 and model.item_vectors.grad[9].abs().sum() == 0
    fresh = model_from_spec(model.spec)  # frozen buffer, same key: loads either way
    fresh.load_state_dict(model.state_dict())
    assert not fresh.item_vectors_trainable


@pytest.mark.parametrize("causal", [False, True])
def test_hf_encoder_with_absolute_positions_is_padding_invariant_and_causal(tmp_path, causal: bool) -> None:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=5, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=16)).save_pretrained(tmp_path / "bert")
    model = _model(str(tmp_path / "bert"), causal)
    history = [3, 5, 2, 7]
    with torch.no_grad():
        bare, _ = model(torch.tensor([history]))
        left, _ = model(torch.tensor([[0, 0] + history]))
        right, _ = model(torch.tensor([history + [0]]))
    torch.testing.assert_close(left, bare, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(right, bare, atol=1e-5, rtol=1e-5)
    if causal:
        with torch.no_grad():
            every = model.item_logits(model.prefix_user_vectors(torch.tensor([history])))
            first_two, _ = model(torch.tensor([history[:2]]))
        torch.testing.assert_close(every[:, 1], first_two, atol=1e-5, rtol=1e-5)


def test_last_pooling_uses_only_the_last_real_output() -> None:
    """pooling=last differs from the mean and follows the most recent item, not the oldest."""
    mean, last = _model(causal=True), _model(causal=True, pooling="last")
    with torch.no_grad():
        a, b = torch.tensor([[3, 5, 2, 7]]), torch.tensor([[3, 5, 2, 9]])
        h_last = last.user_vectors(a)
        torch.testing.assert_close(h_last, last.prefix_user_vectors(a)[:, -1])
        assert not torch.allclose(h_last, mean.user_vectors(a))
        assert not torch.allclose(last.user_vectors(b), h_last)


@pytest.mark.parametrize("item_repr", ["text", "id", "text+id"])
def test_tied_head_scores_items_by_their_input_representation(item_repr: str) -> None:
    """head=tied: no W_proj of its own; an item's score is h_u . (its input representation), so
    the loss trains the adapter / id table through the head too."""
    model = _model(causal=True, item_repr=item_repr, head="tied", pooling="last").train()
    assert not hasattr(model, "head")
    items = torch.tensor([[3, 5, 2, 7]])
    with torch.no_grad():
        model.eval()
        user = model.user_vectors(items)  # (1, D)
        logits, _ = model(items)
        every = model.item_representation(torch.arange(N_ITEMS + 1))  # (N+1, D)
        torch.testing.assert_close(logits[:, 1:], user @ every[1:].T)
    model.train()
    model.zero_grad()
    _, loss = model(items, torch.tensor([[5, 2, 7, 9]]))
    loss.backward()
    table = model.adapter.weight if "text" in item_repr else model.item_embedding.weight
    assert table.grad is not None and table.grad.abs().sum() > 0
    assert model.item_representation(torch.tensor([9])).abs().sum() > 0  # 9 is only ever a target here


@pytest.mark.parametrize("head", ["linear", "tied"])
def test_cosine_scores_ignore_vector_lengths_and_are_bounded_by_the_temperature(head: str) -> None:
    model = _model(causal=True, head=head, score="cosine", temperature=0.1)
    user = torch.randn(3, 16)
    with torch.no_grad():
        logits = model.item_logits(user)[:, 1:]
        assert logits.abs().max() <= 1 / 0.1 + 1e-4
        torch.testing.assert_close(model.item_logits(7.0 * user)[:, 1:], logits)


def test_tied_head_has_no_bias_option() -> None:
    with pytest.raises(ValueError, match="head_bias applies to the linear head"):
        ModelConfig(head="tied", head_bias=True)


def test_history_masking_hides_each_prefixs_items_but_never_the_target() -> None:
    from lite_rec.model.rec_llm import mask_history

    items = torch.tensor([[3, 5, 2, 0]])  # (1, T=4), right-padded
    targets = torch.tensor([[5, 2, 3, IGNORE_INDEX]])  # 3 at position 2 is a repeat: it stays in
    logits = torch.zeros(1, 4, 7)
    hidden = torch.isneginf(mask_history(logits, items, targets))  # (1, 4, 7)
    want = torch.zeros(1, 4, 7, dtype=torch.bool)
    want[..., 0] = True  # padding column
    want[0, 0, [3]] = True
    want[0, 1, [3, 5]] = True
    want[0, 2, [5, 2]] = True  # 3 is this position's target
    want[0, 3, [3, 5, 2]] = True
    assert torch.equal(hidden, want) and not torch.isneginf(logits).any()  # a new tensor
    flat = torch.isneginf(mask_history(torch.zeros(2, 7), torch.tensor([[4, 1, 0], [2, 0, 0]]), torch.tensor([1, 6])))
    assert flat[0].nonzero().flatten().tolist() == [0, 4] and flat[1].nonzero().flatten().tolist() == [0, 2]


def test_history_masking_with_seen_items_hides_them_everywhere_except_at_their_own_target() -> None:
    from lite_rec.model.rec_llm import mask_history

    items = torch.tensor([[3, 5, 0]])  # (1, T=3)
    targets = torch.tensor([[5, 6, IGNORE_INDEX]])  # 6 was seen before the window: a repeat, kept as a target
    seen = torch.zeros(1, 7, dtype=torch.bool)
    seen[0, [1, 6]] = True  # items 1 and 6 came before this window
    hidden = torch.isneginf(mask_history(torch.zeros(1, 3, 7), items, targets, seen))  # (1, 3, 7)
    assert hidden[0, 0].nonzero().flatten().tolist() == [0, 1, 3, 6]
    assert hidden[0, 1].nonzero().flatten().tolist() == [0, 1, 3, 5]  # 6 is this position's target
    assert hidden[0, 2].nonzero().flatten().tolist() == [0, 1, 3, 5, 6]
    flat = torch.isneginf(mask_history(torch.zeros(1, 7), torch.tensor([[3, 0]]), torch.tensor([1]), seen))
    assert flat[0].nonzero().flatten().tolist() == [0, 3, 6]  # 1 is the target


def test_loss_without_history_is_the_cross_entropy_over_unseen_items_only() -> None:
    model = _model(causal=True, pooling="last")
    items, targets = torch.tensor([[3, 5, 2, 7]]), torch.tensor([[5, 2, 7, 9]])
    with torch.no_grad():
        logits, full = model(items, targets)
        _, masked = model(items, targets, exclude_history=True)
    by_hand = []
    for t in range(4):
        allowed = [i for i in range(1, N_ITEMS + 1) if i not in items[0, : t + 1].tolist()]
        row = logits[0, t, allowed]
        by_hand.append(torch.logsumexp(row, 0) - logits[0, t, targets[0, t]])
    torch.testing.assert_close(masked, torch.stack(by_hand).mean())
    assert masked < full  # fewer competitors


def test_future_loss_weights_the_next_item_one_and_each_later_item_future_weight() -> None:
    model = _model(causal=True, pooling="last")
    items = torch.tensor([[3, 5, 2, 0]])
    targets = torch.tensor([[[5, 2, 7], [2, 7, IGNORE_INDEX], [IGNORE_INDEX] * 3, [IGNORE_INDEX] * 3]])  # (1, T, F=3)
    with torch.no_grad():
        logits, loss = model(items, targets, future_weight=0.25)
    lp = logits[0].log_softmax(-1)  # (T, N+1)
    terms = [(1.0, lp[0, 5]), (0.25, lp[0, 2]), (0.25, lp[0, 7]), (1.0, lp[1, 2]), (0.25, lp[1, 7])]
    expected = -sum(w * v for w, v in terms) / sum(w for w, _ in terms)
    torch.testing.assert_close(loss, expected)
    with torch.no_grad():  # one future column is the plain next-item loss
        _, only_next = model(items, targets[..., :1])
        _, plain = model(items, targets[..., 0])
    torch.testing.assert_close(only_next, plain)


def test_future_loss_skips_later_items_the_history_mask_removed() -> None:
    model = _model(causal=True, pooling="last")
    items = torch.tensor([[3, 5, 2]])
    targets = torch.tensor([[[5, 3], [2, 9], [7, IGNORE_INDEX]]])  # 3 at (0, 1) is already in the input
    with torch.no_grad():
        logits, loss = model(items, targets, exclude_history=True, future_weight=1.0)
    assert torch.isfinite(loss)
    lp = logits[0].log_softmax(-1)
    torch.testing.assert_close(loss, -(lp[0, 5] + lp[1, 2] + lp[1, 9] + lp[2, 7]) / 4)


def test_item_dropout_zeroes_whole_item_vectors_in_training_only() -> None:
    model = _model(item_repr="text+id")
    model.input_dropout = torch.nn.Identity()  # only the item dropout here
    items = torch.tensor([[3, 5, 2, 7, 1, 4]] * 64)  # (64, 6)
    plain = model.item_representation(items)  # (64, 6, D)
    assert torch.equal(model.embed_items(items, item_dropout=0.5), plain)  # eval mode: untouched
    model.train()
    torch.manual_seed(1)
    dropped = model.embed_items(items, item_dropout=0.5)  # (64, 6, D)
    gone = (dropped == 0).all(-1)  # (64, 6): whole vectors zeroed ...
    kept = ~gone
    torch.testing.assert_close(dropped[kept], plain[kept])  # ... the others unscaled
    assert 0.35 < gone.float().mean() < 0.65
    assert torch.equal(model.embed_items(items, item_dropout=0.0), plain)


def test_user_vector_dropout_can_differ_from_the_input_dropout_and_survives_a_reload() -> None:
    from lite_rec.model.rec_llm import ModelSpec

    same, apart = _model(), _model(user_dropout=0.0)
    assert same.user_dropout.p == same.input_dropout.p == 0.2
    assert apart.user_dropout.p == 0.0 and apart.input_dropout.p == 0.2
    spec = ModelSpec.from_dict(apart.spec.to_dict())
    assert model_from_spec(spec).user_dropout.p == 0.0
    legacy = {k: v for k, v in same.spec.to_dict().items() if k != "user_dropout"}  # saved before the option
    assert model_from_spec(ModelSpec.from_dict(legacy)).user_dropout.p == 0.2


def test_context_model_adds_a_context_embedding_and_needs_the_contexts() -> None:
    from lite_rec.model.rec_llm import ModelSpec

    model = _model(item_repr="text+id", time_gaps=True, ratings=True)
    assert model.context_embedding.weight.shape[0] == 51  # padding + 10 gaps x 5 ratings
    items = torch.tensor([[3, 5, 2, 0, 0, 0]])  # (1, 6) right-padded
    burst, days = _ids([[1, 6, 6, 0, 0, 0]]), _ids([[1, 41, 41, 0, 0, 0]])  # (1, 6, C) context rows
    assert not torch.allclose(model(items, contexts=burst)[0], model(items, contexts=days)[0])  # they are read
    padded = torch.tensor([[3, 5, 2, 0, 0, 0, 0, 0]]), _ids([[1, 6, 6, 0, 0, 0, 0, 0]])
    torch.testing.assert_close(model(padded[0], contexts=padded[1])[0], model(items, contexts=burst)[0])
    with pytest.raises(ValueError, match=r"reads an input context \(model.time_gaps / model.ratings / model.time_bias / "
                                         r"model.query_time\): "
                                         r"pass contexts \(B, T, C\) with the items \(1, 6\); got none"):
        model(items)
    with pytest.raises(ValueError, match=r"got shape \(1, 6\)"):  # ids alone, the layout before time_bias
        model(items, contexts=burst[..., 0])
    assert not hasattr(_model(), "context_embedding")  # off by default: the paper's inputs
    legacy = {k: v for k, v in _model().spec.to_dict().items()
              if k not in ("time_gaps", "ratings", "time_bias", "calendar", "query_time")}
    assert not ModelSpec.from_dict(legacy).uses_context  # an older model.json


def _ids(ids: list[list[int]], times: list[list[int]] | None = None) -> torch.Tensor:
    """(B, T) context ids [and Unix times] -> (B, T, C) context rows."""
    from lite_rec.model.context import CONTEXT_COLUMNS, CONTEXT_ID, CONTEXT_TIME

    ids_t = torch.tensor(ids)
    rows = torch.zeros(*ids_t.shape, CONTEXT_COLUMNS, dtype=torch.long)
    rows[..., CONTEXT_ID] = ids_t
    if times is not None:
        rows[..., CONTEXT_TIME] = torch.tensor(times)
    return rows


def _with_new_input(**setting: bool) -> tuple[LiteRecModel, LiteRecModel]:
    """A causal id model without and with one more input (``setting``); the second holds the
    first's weights plus its own new, zero-initialised table, so the two should score alike."""
    plain = _model(causal=True, item_repr="id")
    model = _model(causal=True, item_repr="id", **setting)
    own = {k: v for k, v in model.state_dict().items() if k not in plain.state_dict()}
    assert own, f"{setting} adds no parameters"
    model.load_state_dict({**plain.state_dict(), **own}, strict=True)
    return plain, model


def test_time_bias_reads_the_times_keeps_padding_and_causality_and_starts_as_a_no_op() -> None:
    from lite_rec.core.config import ModelConfig

    plain, model = _with_new_input(time_bias=True)
    assert not hasattr(model, "context_embedding") and model.time_bias.weight.shape == (32, 2)  # (buckets, heads)
    items = torch.tensor([[3, 5, 2, 4, 0, 0]])  # (1, 6) right-padded
    times = _ids([[0] * 6], [[0, 60, 86_400, 90_000, 0, 0]])
    torch.testing.assert_close(model(items, contexts=times)[0], plain(items)[0])  # zero init: the plain model
    with torch.no_grad():
        model.time_bias.weight.normal_()
    other = _ids([[0] * 6], [[0, 1, 2, 3, 0, 0]])
    assert not torch.allclose(model(items, contexts=times)[0], model(items, contexts=other)[0])  # the times are read
    shifted = _ids([[0] * 6], [[1_000, 1_060, 87_400, 91_000, 0, 0]])
    torch.testing.assert_close(model(items, contexts=shifted)[0], model(items, contexts=times)[0])  # only intervals count
    padded = torch.tensor([[3, 5, 2, 4, 0, 0, 0, 0]]), _ids([[0] * 8], [[0, 60, 86_400, 90_000, 0, 0, 0, 7]])
    torch.testing.assert_close(model(padded[0], contexts=padded[1])[0], model(items, contexts=times)[0])
    targets = torch.full((1, 6), -100)
    later = _ids([[0] * 6], [[0, 60, 86_400, 10**9, 0, 0]])  # only the last item's time differs
    early = model(items, targets=targets, contexts=times)[0][:, :3]  # (1, 3, N+1) prefixes ending before it
    torch.testing.assert_close(model(items, targets=targets, contexts=later)[0][:, :3], early)
    with pytest.raises(ValueError, match="model.time_bias needs model.backbone=lean"):
        ModelConfig(backbone="t5-small", time_bias=True)


def test_calendar_reads_the_month_keeps_padding_and_causality_and_starts_as_a_no_op() -> None:
    from lite_rec.model.context import CALENDAR_MONTH, CALENDAR_ORIGIN

    plain, model = _with_new_input(calendar=True)
    assert model.calendar_embedding.weight.shape == (512, 16) and not hasattr(model, "context_embedding")
    items = torch.tensor([[3, 5, 2, 4, 0, 0]])  # (1, 6) right-padded
    nov = CALENDAR_ORIGIN + 130 * CALENDAR_MONTH  # the first second of a month
    times = _ids([[0] * 6], [[nov, nov + 60, nov + 86_400, nov + 90_000, 0, 0]])
    torch.testing.assert_close(model(items, contexts=times)[0], plain(items)[0])  # zero init: the plain model
    with torch.no_grad():
        model.calendar_embedding.weight[1:].normal_()
    later = _ids([[0] * 6], [[t + 12 * CALENDAR_MONTH if t else 0 for t in times[0, :, 1].tolist()]])  # a year on
    assert not torch.allclose(model(items, contexts=times)[0], model(items, contexts=later)[0])  # the month is read
    same_month = _ids([[0] * 6], [[nov + 5, nov + 65, nov + 86_405, nov + 90_005, 0, 0]])
    torch.testing.assert_close(model(items, contexts=same_month)[0], model(items, contexts=times)[0])  # only months count
    padded = torch.tensor([[3, 5, 2, 4, 0, 0, 0, 0]]), _ids([[0] * 8], [[*times[0, :4, 1].tolist(), 0, 0, 0, nov]])
    torch.testing.assert_close(model(padded[0], contexts=padded[1])[0], model(items, contexts=times)[0])
    targets = torch.full((1, 6), -100)
    moved = times.clone()
    moved[0, 3, 1] += 40 * CALENDAR_MONTH  # only the last item's month differs
    early = model(items, targets=targets, contexts=times)[0][:, :3]  # (1, 3, N+1) prefixes ending before it
    torch.testing.assert_close(model(items, targets=targets, contexts=moved)[0][:, :3], early)
    assert not torch.allclose(model(items, targets=targets, contexts=moved)[0][:, 3], model(items, targets=targets, contexts=times)[0][:, 3])


def test_query_time_reads_the_next_gap_keeps_padding_and_item_causality_and_starts_as_a_no_op() -> None:
    from lite_rec.model.context import CONTEXT_NEXT_GAP

    plain, model = _with_new_input(query_time=True)
    assert model.query_gap_embedding.weight.shape == (10, 16) and not hasattr(model, "context_embedding")
    items = torch.tensor([[3, 5, 2, 4, 0, 0]])  # (1, 6) right-padded

    def rows(gaps: list[int]) -> torch.Tensor:
        out = _ids([[0] * len(gaps)])
        out[..., CONTEXT_NEXT_GAP] = torch.tensor([gaps])
        return out

    burst = rows([1, 1, 6, 1, 0, 0])  # the last input's next item (the query) comes in the same second
    torch.testing.assert_close(model(items, contexts=burst)[0], plain(items)[0])  # zero init: the plain model
    with torch.no_grad():
        model.query_gap_embedding.weight[1:].normal_()
    visit = rows([1, 1, 6, 9, 0, 0])  # ... or months later
    assert not torch.allclose(model(items, contexts=burst)[0], model(items, contexts=visit)[0])  # the query time is read
    padded = torch.tensor([[3, 5, 2, 4, 0, 0, 0, 0]]), rows([1, 1, 6, 1, 0, 0, 0, 5])
    torch.testing.assert_close(model(padded[0], contexts=padded[1])[0], model(items, contexts=burst)[0])
    targets = torch.full((1, 6), -100)
    swapped = torch.tensor([[3, 5, 2, 1, 0, 0]])  # a later item's identity never reaches an earlier prefix
    early = model(items, targets=targets, contexts=burst)[0][:, :3]  # (1, 3, N+1)
    torch.testing.assert_close(model(swapped, targets=targets, contexts=burst)[0][:, :3], early)
    later = model(items, targets=targets, contexts=visit)[0]  # the last input's next gap: its own prefix only
    torch.testing.assert_close(later[:, :3], early)
    assert not torch.allclose(later[:, 3], model(items, targets=targets, contexts=burst)[0][:, 3])
    from lite_rec.core.config import ModelConfig

    with pytest.raises(ValueError, match="model.query_gap_floor=3600 coarsens the gap model.query_time reads"):
        ModelConfig(backbone="lean", query_gap_floor=3600)
    assert _model(query_time=True, query_gap_floor=3600).spec.context_features["query_gap_floor"] == 3600


def test_both_forms_of_the_bucket_bias_give_the_same_values_and_gradients() -> None:
    from lite_rec.model.rec_llm import bucket_bias

    buckets = torch.randint(0, 32, (2, 5, 5))  # (B, T, T)
    grads = []
    for onehot in (False, True):
        weight = torch.randn(32, 3, generator=torch.Generator().manual_seed(1), requires_grad=True)  # (K, H)
        out = bucket_bias(buckets, weight, onehot=onehot)  # (B, T, T, H)
        assert out.shape == (2, 5, 5, 3)
        torch.testing.assert_close(out, weight.detach()[buckets])
        (out * torch.arange(3.0)).sum().backward()
        grads.append(weight.grad)
    torch.testing.assert_close(grads[0], grads[1])
    assert grads[0].abs().sum() > 0


def test_history_logit_adds_one_value_to_each_prefixs_items_and_the_seen_ones_once_each() -> None:
    from lite_rec.model.rec_llm import add_history_logit

    items = torch.tensor([[3, 5, 3, 0]])  # (1, T=4): 3 repeats; right-padded
    seen = torch.zeros(1, 7, dtype=torch.bool)
    seen[0, [1, 5]] = True  # before the window; 5 comes again inside it
    logits = torch.zeros(1, 4, 7)
    logits[..., 0] = float("-inf")  # padding, as item_logits returns it
    out = add_history_logit(logits, items, torch.tensor(-2.0), seen=seen)  # (1, 4, 7)
    want = logits.clone()
    want[0, 0, [1, 3, 5]] = -2.0
    want[0, 1:, [1, 3, 5]] = -2.0  # never -4: an item counts once
    assert torch.equal(out, want)
    history = torch.tensor([[2, 4, 4, 0], [6, 0, 0, 0]])  # (B, H) whole histories, 0-padded
    flat = add_history_logit(torch.zeros(2, 7), torch.tensor([[4, 0], [6, 0]]), torch.tensor(1.5), history=history)
    assert flat[:, 1:].nonzero().tolist() == [[0, 1], [0, 3], [1, 5]]  # items 2, 4 and 6: the histories, not the inputs
    assert set(flat[:, 1:][flat[:, 1:] != 0].tolist()) == {1.5}


def test_history_logit_starts_at_zero_learns_from_the_loss_and_needs_the_history_at_inference() -> None:
    plain, model = _model(causal=True, pooling="last"), _model(causal=True, pooling="last", history_logit=True)
    items, targets = torch.tensor([[3, 5, 2, 7]]), torch.tensor([[5, 2, 7, 9]])
    with torch.no_grad():
        torch.testing.assert_close(model(items, targets)[0], plain(items, targets)[0])  # no-op at the start
        model.history_logit_param.fill_(-0.25)
        scored, _ = model(items, targets)
        alone, _ = model(items)  # inference without a history: no history score
        given, _ = model(items, history=torch.tensor([[3, 5, 2, 7, 11]]))
    assert model.history_logit().item() == pytest.approx(-4.0)  # 16 logits per unit
    torch.testing.assert_close(scored[0, 1, [3, 5]], plain(items, targets)[0][0, 1, [3, 5]] - 4.0)
    torch.testing.assert_close(alone, plain(items)[0])
    assert (alone - given)[0, [3, 5, 2, 7, 11]].tolist() == [4.0] * 5
    model.history_logit_param.data.zero_()
    _, loss = model.train()(items, targets)
    loss.backward()
    # no target repeats an item of its prefix, so the loss pushes the score of seen items down
    assert model.history_logit_param.grad.item() > 0


def test_history_logit_without_a_full_mask_equals_the_mask_in_values_and_gradients() -> None:
    """The (B, T, N+1) form scatters instead of building a mask; with repeats in the window and
    items both in the window and in ``seen`` it must still add the value once, and its gradients
    (to the logits and to the value) must be those of the plain masked sum."""
    from lite_rec.model.rec_llm import add_history_logit

    g = torch.Generator().manual_seed(0)
    items = torch.tensor([[3, 5, 3, 9, 0, 0], [2, 2, 7, 1, 8, 4]])  # (B=2, T=6): repeats, padding
    seen = torch.zeros(2, 11, dtype=torch.bool)
    seen[0, [5, 6]] = True  # 5 is also in the window
    seen[1, [4, 10]] = True
    base = torch.randn(2, 6, 11, generator=g)
    base[..., 0] = float("-inf")
    weights = torch.randn(2, 6, 11, generator=g)  # a loss that weighs every score differently
    grads = []
    for form in ("scatter", "mask"):
        logits, value = base.clone().requires_grad_(), torch.tensor(-1.5, requires_grad=True)
        if form == "scatter":
            out = add_history_logit(logits, items, value, seen=seen)
        else:
            t = items.shape[1]
            has = torch.zeros(2, t, 11, dtype=torch.bool)
            for b in range(2):
                for pos in range(t):
                    has[b, pos, items[b, : pos + 1]] = True
            has = (has | seen[:, None, :]) & (torch.arange(11) > 0)
            out = logits + value * has
        finite = torch.isfinite(out)
        (out.masked_fill(~finite, 0) * weights).sum().backward()
        grads.append((out.detach(), logits.grad, value.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])
    torch.testing.assert_close(grads[0][2], grads[1][2])
