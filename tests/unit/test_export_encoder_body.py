"""scripts/export_encoder_body.py: a light copy of an encoder that loads as the same pretrained backbone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from lite_rec.config import REPO_ROOT
from lite_rec.encoder_backbone import build_backbone


def _tiny_bert(path: Path) -> None:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=500, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                     max_position_embeddings=64)
    BertModel(cfg).save_pretrained(path)


def test_the_exported_body_loads_as_the_same_backbone_without_its_token_table(tmp_path: Path) -> None:
    _tiny_bert(tmp_path / "full")
    done = subprocess.run([sys.executable, "scripts/export_encoder_body.py", str(tmp_path / "full"), str(tmp_path / "body")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    saved = load_file(str(tmp_path / "body" / "model.safetensors"))
    assert not any("word_embeddings" in k for k in saved)
    assert {v.dtype for v in saved.values() if v.is_floating_point()} == {torch.float16}

    full, _, _ = build_backbone(str(tmp_path / "full"), 0, 0, 0, 0, 0.0, True)
    body, _, note = build_backbone(str(tmp_path / "body"), 0, 0, 0, 0, 0.0, True)
    assert note.startswith("pretrained") and next(body.parameters()).dtype == torch.float32
    x, real = torch.randn(2, 5, 32), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    full.eval(), body.eval()
    with torch.no_grad():
        torch.testing.assert_close(body(x, real, True), full(x, real, True), atol=2e-2, rtol=2e-2)  # fp16 rounding


def test_a_folder_without_weights_is_refused_by_name(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "scripts/export_encoder_body.py", str(tmp_path), str(tmp_path / "out")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and str(tmp_path) in done.stderr and "model.safetensors" in done.stderr
