"""The recommendation LLM + head: shapes, padding invariance, causality, onepass == per prefix."""

from __future__ import annotations

import pytest
import torch

from lite_rec.core.errors import DataError
from lite_rec.model.rec_llm import LiteRecModel, build_model, model_from_spec
from lite_rec.model.scoring import IGNORE_INDEX
from lite_rec.model.spec import ModelConfig, ModelSpec

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
    model = _model(item_repr=item_repr)
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


def test_spec_holds_the_settings_once_and_rebuilds_the_same_model() -> None:
    """A spec is the derived facts plus the ModelConfig itself: a JSON round trip gives the same
    spec, and the rebuilt model takes the weights and scores alike."""
    import json

    model = _model(causal=True, item_repr="text+id", pooling="last", history_logit=True)
    assert set(model.spec.to_dict()) == {"n_items", "item_dim", "causal", "backbone", "config"}
    assert model.spec.config.pooling == "last" and model.spec.item_dim == ITEM_DIM and model.spec.causal
    spec = ModelSpec.from_dict(json.loads(json.dumps(model.spec.to_dict())))
    assert spec == model.spec
    again = model_from_spec(spec)
    again.load_state_dict(model.state_dict(), strict=True)
    items = torch.tensor([[3, 5, 2, 0]])
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(items)[0], model(items)[0])


def test_spec_of_an_older_layout_or_with_unknown_settings_is_refused_by_name() -> None:
    saved = _model().spec.to_dict()
    config = saved.pop("config")
    with pytest.raises(ValueError, match="saved by an older lite-rec .*retrain it"):
        ModelSpec.from_dict({**saved, **config})  # settings beside n_items, as before they moved into the spec
    with pytest.raises(ValueError, match=r"unknown model setting 'model.user_dropout'; did you mean 'model.dropout'"):
        ModelSpec.from_dict({**saved, "config": {**config, "user_dropout": 0.1}})
    with pytest.raises(ValueError, match=r"model.dropout must be in \[0.0, 1.0\) \(got 1.5\)"):
        ModelSpec.from_dict({**saved, "config": {**config, "dropout": 1.5}})


def test_context_model_adds_a_context_embedding_and_needs_the_contexts() -> None:
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
    with pytest.raises(ValueError, match="model.query_gap_floor=3600 coarsens the gap model.query_time reads"):
        ModelConfig(backbone="lean", query_gap_floor=3600)
    assert _model(query_time=True, query_gap_floor=3600).spec.config.context_features["query_gap_floor"] == 3600


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
    from lite_rec.model.scoring import add_history_logit

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


def test_history_mask_hides_each_prefixs_items_and_the_seen_ones_at_every_position() -> None:
    from lite_rec.model.scoring import mask_history

    items = torch.tensor([[3, 5, 2, 0]])  # (1, T=4), right-padded
    logits = torch.zeros(1, 4, 7)
    hidden = torch.isneginf(mask_history(logits, items))  # (1, 4, 7)
    want = torch.zeros(1, 4, 7, dtype=torch.bool)
    want[..., 0] = True  # padding column
    want[0, 0, [3]] = True
    want[0, 1, [3, 5]] = True
    want[0, 2:, [3, 5, 2]] = True
    assert torch.equal(hidden, want) and not torch.isneginf(logits).any()  # a new tensor
    seen = torch.zeros(1, 7, dtype=torch.bool)
    seen[0, [1, 6]] = True  # items 1 and 6 came before this window
    hidden = torch.isneginf(mask_history(logits, items, seen))
    assert torch.equal(hidden, want | seen[:, None, :])


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
    from lite_rec.model.scoring import add_history_logit

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
