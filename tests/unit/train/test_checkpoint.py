"""Model files, atomic writes, RNG capture and the resume-checkpoint guards."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from lite_rec.core.errors import CacheMismatch
from lite_rec.model.rec_llm import build_model
from lite_rec.model.spec import ModelConfig
from lite_rec.train.checkpoint import (
    MODEL_META,
    RESUME_FILE,
    capture_rng,
    check_fingerprint,
    load_model,
    load_resume,
    restore_rng,
    save_model,
    save_resume,
    write_json,
)


@pytest.mark.parametrize(("backbone", "item_repr"), [("lean", "text"), ("t5-small", "text+id"), ("lean", "id")])
def test_saved_model_reloads_offline_with_identical_scores(tmp_path: Path, backbone: str, item_repr: str) -> None:
    torch.manual_seed(0)
    vectors = torch.randn(10, 8)
    vectors[0] = 0
    cfg = ModelConfig(backbone=backbone, pretrained=False, d_model=16, n_layers=1, n_heads=2, d_ff=32,
                      item_repr=item_repr, max_seq_len=4)
    model, _ = build_model(cfg, 9, vectors, causal=True)
    model.unfreeze_item_vectors()  # a stage-2 model saves like any other
    save_model(model.eval(), tmp_path, {"backbone_init": "random init (test)"})
    loaded, meta = load_model(tmp_path)
    assert meta["backbone_init"] == "random init (test)" and meta["spec"]["causal"] is True
    items = torch.tensor([[1, 2, 3, 0], [4, 0, 0, 0]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(items)[0], model(items)[0], atol=0, rtol=0)


def test_failed_write_keeps_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    write_json(path, {"ok": 1})
    with pytest.raises(TypeError):
        write_json(path, {1j: 2})  # a complex key is not JSON
    assert json.loads(path.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp file left behind


def test_rng_state_round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    save_resume(tmp_path, {"rng": capture_rng(), "stage": 1, "epoch": 0, "step": 5, "global_step": 5, "done": False})
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng(load_resume(tmp_path)["rng"])  # weights_only load
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    assert json.loads((tmp_path / "resume.json").read_text()) == {
        "done": False, "epoch": 0, "global_step": 5, "stage": 1, "step": 5}


def test_resume_refuses_other_settings_and_names_them(tmp_path: Path) -> None:
    saved = {"train": {"lr": 0.001, "seed": 1}, "sequences_sha256": "aa"}
    check_fingerprint(saved, dict(saved), tmp_path / RESUME_FILE)
    with pytest.raises(CacheMismatch, match=r"resume\.pt.*train\.lr: checkpoint 0\.001 vs now 0\.002\)"):
        check_fingerprint(saved, {**saved, "train": {"lr": 0.002, "seed": 1}}, tmp_path / RESUME_FILE)


def test_a_setting_added_after_the_checkpoint_matches_only_at_its_default(tmp_path: Path) -> None:
    saved = {"train": {"lr": 0.001}, "sequences_sha256": "aa"}  # written before train.new_knob existed
    defaults = {"train": {"lr": 5e-4, "new_knob": 1}}
    check_fingerprint(saved, {**saved, "train": {"lr": 0.001, "new_knob": 1}}, tmp_path / RESUME_FILE, defaults)
    with pytest.raises(CacheMismatch, match=r"train\.new_knob: checkpoint \(not recorded\) vs now 3"):
        check_fingerprint(saved, {**saved, "train": {"lr": 0.001, "new_knob": 3}}, tmp_path / RESUME_FILE, defaults)
    with pytest.raises(CacheMismatch, match=r"train\.new_knob"):  # without defaults nothing is assumed
        check_fingerprint(saved, {**saved, "train": {"lr": 0.001, "new_knob": 1}}, tmp_path / RESUME_FILE)


def test_unreadable_resume_checkpoint_is_an_error_not_a_fresh_start(tmp_path: Path) -> None:
    assert load_resume(tmp_path) is None
    (tmp_path / RESUME_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(CacheMismatch, match="unreadable resume checkpoint"):
        load_resume(tmp_path)
    assert not (tmp_path / MODEL_META).exists()
