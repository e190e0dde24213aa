"""The lean SDPA encoder computes exactly what Hugging Face's T5 encoder computes."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel
from transformers.models.t5.modeling_t5 import T5Attention

from lite_rec.model.backbone import (
    BackboneSpec,
    HFEncoder,
    LeanEncoder,
    attention_allowed,
    build_backbone,
    build_from_spec,
    hub_unreachable,
    load_t5_weights_into_lean,
    relative_position_bucket,
)


def _t5_and_lean(seed: int = 0) -> tuple[HFEncoder, LeanEncoder]:
    torch.manual_seed(seed)
    t5 = build_from_spec(BackboneSpec("t5", d_model=32, n_layers=2, n_heads=4, d_ff=64, dropout=0.0)).eval()
    with torch.no_grad():  # non-trivial norm scales, so a wrongly mapped norm would show
        for name, p in t5.named_parameters():
            if "layer_norm" in name:
                p.uniform_(0.5, 1.5)
    lean = LeanEncoder(32, 2, 4, 64, dropout=0.0).eval()
    load_t5_weights_into_lean(lean, t5.hf.state_dict())
    return t5, lean


def test_relative_buckets_match_t5() -> None:
    rel = torch.arange(-300, 301)[None, :]
    expected = T5Attention._relative_position_bucket(rel, bidirectional=True, num_buckets=32, max_distance=128)
    assert torch.equal(relative_position_bucket(rel), expected)


@pytest.mark.parametrize("causal", [False, True])
def test_lean_encoder_with_t5_weights_equals_t5_encoder(causal: bool) -> None:
    t5, lean = _t5_and_lean()
    x = torch.randn(3, 7, 32)  # (B, T, D)
    real = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [0] * 2 + [1] * 5]).bool()
    with torch.no_grad():
        expected, got = t5(x, real, causal), lean(x, real, causal)
    assert got.shape == (3, 7, 32)
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(got).all()  # padding rows too: no all-masked softmax row


def test_gated_t5_weights_are_refused() -> None:
    lean = LeanEncoder(16, 1, 2, 32, 0.0)
    with pytest.raises(ValueError, match="gated-gelu"):
        load_t5_weights_into_lean(lean, {"encoder.block.0.layer.1.DenseReluDense.wi_0.weight": torch.zeros(1)})


def test_attention_mask_hides_padding_and_the_future_but_never_a_whole_row() -> None:
    right = torch.tensor([[True, True, False]])
    assert attention_allowed(right, causal=True)[0, 0].int().tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    assert attention_allowed(right, causal=False)[0, 0].int().tolist() == [[1, 1, 0], [1, 1, 0], [1, 1, 1]]
    left = torch.tensor([[False, True, True]])  # causal + left padding: row 0 has no real key at all
    assert attention_allowed(left, causal=True)[0, 0].int().tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]


def test_t5_sizes_other_than_t5_small_start_random_and_say_why() -> None:
    _, spec, note = build_backbone("t5-small", 32, 1, 2, 64, 0.1, pretrained=True)
    assert spec.kind == "t5" and "random init" in note and "differ from t5-small" in note


def test_unreachable_t5_weights_fall_back_to_random_init() -> None:
    # HF_HUB_OFFLINE=1 (tests/conftest.py): the hub cannot be reached from the tests
    module, spec, note = build_backbone("lean", 512, 6, 8, 2048, 0.1, pretrained=True)
    assert isinstance(module, LeanEncoder) and spec.kind == "lean"
    assert note == "random init (google-t5/t5-small not cached and the hub unreachable: HF_HUB_OFFLINE is set)"


def test_a_hub_that_does_not_answer_is_given_up_at_once_not_after_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    assert hub_unreachable() == f"127.0.0.1:{port} not reachable (ConnectionRefusedError)"
    started = time.monotonic()
    _, _, note = build_backbone("lean", 512, 6, 8, 2048, 0.1, pretrained=True)
    assert time.monotonic() - started < 30  # the hub client's own retries take minutes
    assert note == f"random init (google-t5/t5-small not cached and the hub unreachable: 127.0.0.1:{port} not reachable (ConnectionRefusedError))"


def test_a_listening_hub_is_reachable(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub_unreachable() is None


def test_any_hf_encoder_by_path_is_fed_inputs_embeds(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=11, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=40)
    BertModel(config).save_pretrained(tmp_path / "tiny-bert")
    module, spec, note = build_backbone(str(tmp_path / "tiny-bert"), 99, 9, 9, 99, 0.5, pretrained=True)
    assert note == f"pretrained {tmp_path / 'tiny-bert'}"
    assert spec.kind == "hf" and spec.d_model == 16 and spec.hf_config["model_type"] == "bert"
    assert module.hf.get_input_embeddings().weight.shape == (1, 16)  # token table dropped
    module.eval()
    out = module(torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.bool))
    assert out.shape == (2, 5, 16)
    rebuilt = build_from_spec(spec)  # offline: the spec carries the config
    rebuilt.load_state_dict(module.state_dict())
