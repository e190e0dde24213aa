"""The item-vector cache: reuse, partial re-encoding, invalidation, and refusing bad caches."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from lite_rec.core.config import LiteRecConfig, build_config
from lite_rec.core.errors import CacheMismatch, DataError
from lite_rec.items.cache import cache_dir_for, encoder_slug, load_item_vectors, load_or_encode_items
from lite_rec.items.encoder import ItemEncoder, encode_texts
from tests.unit.items.test_encoder import save_tiny_bert

MOVIES = [
    ("m1", "Toy Story (1995)", "Animation, Comedy"),
    ("m2", "Heat (1995)", "Action, Crime"),
    ("m3", "Alien (1979)", "Horror, Sci-Fi"),
    ("m4", "Fargo (1996)", None),
    ("m5", "Babe (1995)", "Children's"),
]


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("enc") / "tiny-bert")


def _cfg(data_dir: Path, model: Path, **enc) -> LiteRecConfig:
    encoder = {"model": str(model), "device": "cpu", "batch_size": 2, "max_tokens": 16, **enc}
    return build_config("ml-100k", overrides={"data_dir": str(data_dir), "item_encoder": encoder})


def _write_items(cfg: LiteRecConfig, movies: list[tuple[str, str, str | None]]) -> None:
    cfg.processed_dir.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame({
        "item_idx": pd.Series(range(1, len(movies) + 1), dtype="int64"),
        "item_id": [m[0] for m in movies], "title": [m[1] for m in movies], "genres": [m[2] for m in movies],
    })
    for col in ("brand", "categories", "description"):
        df[col] = pd.Series([None] * len(movies), dtype="string")
    df.to_parquet(cfg.processed_dir / "items.parquet", index=False)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every text the cache hands to the (real) encoder, in order."""
    seen: list[str] = []
    real = ItemEncoder.encode

    def encode(self: ItemEncoder, texts: list[str], *, progress: bool = True) -> torch.Tensor:
        seen.extend(texts)
        return real(self, texts, progress=progress)

    monkeypatch.setattr(ItemEncoder, "encode", encode)
    return seen


def _files(cache_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(cache_dir.iterdir())}


def test_first_run_encodes_every_item_in_item_idx_order(tmp_path: Path, bert: Path, counted: list[str]) -> None:
    cfg = _cfg(tmp_path, bert)
    _write_items(cfg, MOVIES)
    iv = load_or_encode_items(cfg, progress=False)
    assert iv.encoded == 5 and len(counted) == 5
    assert iv.vectors.shape == (6, 32) and iv.vectors.dtype == torch.float32
    assert torch.equal(iv.vectors[0], torch.zeros(32))
    texts = [f"Title: {t}. Genres: {g}." if g else f"Title: {t}." for _, t, g in MOVIES]
    assert texts[3] == "Title: Fargo (1996)."
    assert torch.allclose(iv.vectors[1:], encode_texts(texts, cfg.item_encoder, progress=False), atol=1e-5)
    assert iv.manifest["item_ids"] == ["m1", "m2", "m3", "m4", "m5"]
    assert iv.manifest["text_sha256"][0] == hashlib.sha256(b"Title: Toy Story (1995). Genres: Animation, Comedy.").hexdigest()
    cache_dir = cfg.runs_dir / "item_vectors" / encoder_slug(str(bert))
    assert cache_dir_for(cfg) == cache_dir and sorted(_files(cache_dir)) == ["manifest.json", "vectors.safetensors"]
    assert torch.equal(load_item_vectors(cache_dir, iv.item_ids).vectors, iv.vectors)


def test_second_run_reuses_every_vector_and_rewrites_nothing(tmp_path: Path, bert: Path, counted: list[str]) -> None:
    cfg = _cfg(tmp_path, bert)
    _write_items(cfg, MOVIES)
    first = load_or_encode_items(cfg, progress=False)
    before = _files(cache_dir_for(cfg))
    counted.clear()
    second = load_or_encode_items(cfg, progress=False)
    assert second.encoded == 0 and counted == []
    assert torch.equal(second.vectors, first.vectors)
    assert _files(cache_dir_for(cfg)) == before


def test_changing_one_title_reencodes_exactly_that_item(tmp_path: Path, bert: Path, counted: list[str]) -> None:
    cfg = _cfg(tmp_path, bert)
    _write_items(cfg, MOVIES)
    old = load_or_encode_items(cfg, progress=False)
    counted.clear()
    changed = list(MOVIES)
    changed[2] = ("m3", "Aliens (1986)", "Horror, Sci-Fi")
    _write_items(cfg, changed)
    new = load_or_encode_items(cfg, progress=False)
    assert new.encoded == 1 and counted == ["Title: Aliens (1986). Genres: Horror, Sci-Fi."]
    assert new.manifest["last_update"]["encoded"] == 1 and new.manifest["last_update"]["reused"] == 4
    for row in (0, 1, 2, 4, 5):
        assert torch.equal(new.vectors[row], old.vectors[row])
    assert not torch.allclose(new.vectors[3], old.vectors[3], atol=1e-3)
    assert torch.allclose(new.vectors[3], encode_texts(counted, cfg.item_encoder, progress=False)[0], atol=1e-5)


def test_added_and_removed_items_rebuild_rows_in_the_new_order(tmp_path: Path, bert: Path, counted: list[str]) -> None:
    cfg = _cfg(tmp_path, bert)
    _write_items(cfg, MOVIES)
    old = load_or_encode_items(cfg, progress=False)
    counted.clear()
    _write_items(cfg, [*MOVIES, ("m6", "Casino (1995)", "Drama")])
    grown = load_or_encode_items(cfg, progress=False)
    assert grown.encoded == 1 and counted == ["Title: Casino (1995). Genres: Drama."]
    assert torch.equal(grown.vectors[:6], old.vectors)
    counted.clear()
    shrunk_movies = [m for m in [*MOVIES, ("m6", "Casino (1995)", "Drama")] if m[0] != "m2"]
    _write_items(cfg, shrunk_movies)  # m2 removed: m3..m6 move up one item_idx
    shrunk = load_or_encode_items(cfg, progress=False)
    assert shrunk.encoded == 0 and counted == []
    assert shrunk.item_ids == ["m1", "m3", "m4", "m5", "m6"] and shrunk.vectors.shape == (6, 32)
    assert torch.equal(shrunk.vectors, grown.vectors[[0, 1, 3, 4, 5, 6]])
    with pytest.raises(CacheMismatch, match=r"cache has 5 items, expected 6; not in cache: \['m2'\]"):
        load_item_vectors(cache_dir_for(cfg), grown.item_ids)


def test_encoder_or_weights_or_max_tokens_change_reencodes_everything(tmp_path: Path, counted: list[str]) -> None:
    model = save_tiny_bert(tmp_path / "enc", seed=0)
    cfg = _cfg(tmp_path / "data", model)
    _write_items(cfg, MOVIES)
    first = load_or_encode_items(cfg, progress=False)
    save_tiny_bert(model, seed=1)  # same path, new weights
    retrained = load_or_encode_items(cfg, progress=False)
    assert retrained.encoded == 5
    assert "weights_sha256" in retrained.manifest["last_update"]["reason"]
    assert not torch.allclose(retrained.vectors[1:], first.vectors[1:], atol=1e-3)
    shorter = load_or_encode_items(_cfg(tmp_path / "data", model, max_tokens=8), progress=False)
    assert shorter.encoded == 5 and "max_tokens 16 -> 8" in shorter.manifest["last_update"]["reason"]
    other = save_tiny_bert(tmp_path / "other-enc", seed=2)
    counted.clear()
    moved = load_or_encode_items(_cfg(tmp_path / "data", other), progress=False)
    assert moved.encoded == 5 and len(counted) == 5
    assert cache_dir_for(_cfg(tmp_path / "data", other)) != cache_dir_for(cfg)


def test_tampered_or_foreign_caches_raise_cache_mismatch(tmp_path: Path, bert: Path) -> None:
    cfg = _cfg(tmp_path, bert)
    _write_items(cfg, MOVIES)
    good = load_or_encode_items(cfg, progress=False)
    cache_dir = cache_dir_for(cfg)
    with pytest.raises(CacheMismatch, match=r"encoder weights sha256:[0-9a-f]{64} differ from the current sha256:0{64}"):
        load_item_vectors(cache_dir, good.item_ids, expected_weights_sha256="sha256:" + "0" * 64)
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    manifest["item_ids"][0], manifest["item_ids"][1] = "m2", "m1"
    (cache_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheMismatch, match=r"first difference at item_idx 1: cached 'm2', expected 'm1'"):
        load_item_vectors(cache_dir, good.item_ids)
    save_file({"vectors": torch.ones(6, 32)}, str(cache_dir / "vectors.safetensors"))
    with pytest.raises(CacheMismatch, match=r"vectors.safetensors: sha256 .* does not match"):
        load_item_vectors(cache_dir)
    rebuilt = load_or_encode_items(cfg, progress=False)  # never uses the tampered file
    assert rebuilt.encoded == 5 and "unusable cache" in rebuilt.manifest["last_update"]["reason"]
    assert torch.allclose(rebuilt.vectors, good.vectors, atol=1e-5)
    (cache_dir / "manifest.json").write_text("{not json")
    with pytest.raises(CacheMismatch, match=r"manifest.json: not valid JSON"):
        load_item_vectors(cache_dir)
    with pytest.raises(CacheMismatch, match=r"no item-vector cache here"):
        load_item_vectors(tmp_path / "nowhere")


def test_bad_items_file_raises_and_leaves_the_good_cache_untouched(tmp_path: Path, bert: Path) -> None:
    cfg = _cfg(tmp_path, bert)
    with pytest.raises(DataError, match=r"items.parquet does not exist: run `lite-rec ingest ml-100k` first"):
        load_or_encode_items(cfg, progress=False)
    _write_items(cfg, MOVIES)
    load_or_encode_items(cfg, progress=False)
    before = _files(cache_dir_for(cfg))
    df = pd.read_parquet(cfg.processed_dir / "items.parquet")
    df.loc[4, "item_idx"] = 7
    df.to_parquet(cfg.processed_dir / "items.parquet", index=False)
    with pytest.raises(DataError, match=r"items.parquet: item_idx must run 1..N .* row 4 has item_idx 7, expected 5"):
        load_or_encode_items(cfg, progress=False)
    (cfg.processed_dir / "items.parquet").write_bytes(b"PAR1 truncated")
    with pytest.raises(DataError, match=r"items.parquet: cannot read as Parquet"):
        load_or_encode_items(cfg, progress=False)
    assert _files(cache_dir_for(cfg)) == before
    assert [p.name for p in cache_dir_for(cfg).parent.iterdir()] == [cache_dir_for(cfg).name]  # no temp left


def test_default_encoder_cache_folder_is_named_after_the_hub_id() -> None:
    assert encoder_slug("all-MiniLM-L6-v2") == "sentence-transformers--all-MiniLM-L6-v2"
    assert encoder_slug("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers--all-MiniLM-L6-v2"
    assert encoder_slug("t5-small") == "t5-small"


def test_gpu_worker_path_imports_without_pydantic_duckdb_prefect_or_mlflow() -> None:
    """GPU workers have torch, transformers, pandas, pyarrow and safetensors only."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'pydantic', 'duckdb', 'prefect', 'mlflow', 'yaml', 'great_expectations'}:\n"
        "            raise ImportError('blocked on GPU workers: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import lite_rec.items.cache, lite_rec.items.encoder, lite_rec.items.text\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[3])
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_catalog_texts_encode_only_what_no_cache_holds(tmp_path: Path, bert: Path, counted: list[str]) -> None:
    """``vectors_for_texts`` (lite-rec add-items): a text the dataset's cache has is read from it, a
    new one is encoded once and kept in ``added/``, so sending the same file again encodes nothing."""
    from lite_rec.items.cache import ADDED, vectors_for_texts

    cfg = _cfg(tmp_path, bert)
    _write_items(cfg, MOVIES)
    cached = load_or_encode_items(cfg, progress=False)
    counted.clear()
    known = "Title: Heat (1995). Genres: Action, Crime."  # m2's text
    texts = [known, "Title: A New Film (2026). Genres: Drama.", "Title: A New Film (2026). Genres: Drama."]
    vectors, encoded = vectors_for_texts(cfg, texts, progress=False)  # (3, D)
    assert encoded == 1 and counted == [texts[1]]  # the repeated new text once, the known one not at all
    assert torch.equal(vectors[0], cached.vectors[2]) and torch.equal(vectors[1], vectors[2])
    again, encoded = vectors_for_texts(cfg, texts[1:2], progress=False)
    assert encoded == 0 and counted == [texts[1]] and torch.equal(again[0], vectors[1])
    assert (cache_dir_for(cfg) / ADDED / "manifest.json").is_file()
    assert load_item_vectors(cache_dir_for(cfg)).manifest == cached.manifest  # the dataset's cache is left as it was
