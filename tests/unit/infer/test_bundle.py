"""The model bundle: exact round trip, atomic writes, and refusal of incomplete or altered files."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from lite_rec.core.errors import CacheMismatch, DataError
from lite_rec.core.io import sha256_file
from lite_rec.infer.bundle import BUNDLE_FILES, BUNDLE_FORMAT_VERSION, load_bundle, save_bundle
from lite_rec.model.rec_llm import build_model
from lite_rec.model.spec import ModelConfig
from lite_rec.train.export import build_bundle

N_ITEMS = 7
MODEL_CFG = ModelConfig(backbone="lean", pretrained=False, d_model=8, n_layers=1, n_heads=2, d_ff=16, dropout=0.0, max_seq_len=3)


def _items() -> pd.DataFrame:
    # Shuffled on purpose: the bundle must store them in item_idx order.
    return pd.DataFrame(
        {"item_idx": [3, 1, 2, 4, 5, 6, 7], "item_id": ["c", "a", "b", "d", "e", "f", "g"], "title": ["C", "A", None, "D", "E", "F", "G"]}
    )


def _popularity() -> pd.DataFrame:
    return pd.DataFrame({"item_idx": [1, 2, 3, 4, 5, 6, 7], "count": [2, 9, 0, 9, 1, 0, 3]})


def _write(path: Path, **kw) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    vectors = torch.randn(N_ITEMS + 1, 5)
    vectors[0] = 0
    model, _ = build_model(MODEL_CFG, N_ITEMS, vectors, causal=False)
    state = model.state_dict()
    args = dict(
        spec=model.spec, state_dict=state, items=_items(), popularity=_popularity(),
        dataset="tiny", protocol={"exclude_history": True, "k_core": 5},
    )
    args.update(kw)
    return save_bundle(path, **args), state


def test_round_trip_keeps_tensors_tables_and_metadata(tmp_path: Path) -> None:
    path, state = _write(tmp_path / "b")
    bundle = load_bundle(path)
    assert set(bundle.tensors) == set(state)
    for key, tensor in state.items():
        assert torch.equal(bundle.tensors[key], tensor), key
    assert bundle.items["item_idx"].tolist() == list(range(1, N_ITEMS + 1))
    assert bundle.items["item_id"].tolist() == ["a", "b", "c", "d", "e", "f", "g"]
    assert bundle.items["title"].tolist() == ["A", "", "C", "D", "E", "F", "G"]  # missing title -> ""
    # Most popular first; equal counts ordered by the smaller item_idx (as lite_rec.eval.popularity does).
    assert bundle.popularity["item_idx"].tolist() == [2, 4, 7, 1, 5, 3, 6]
    assert bundle.model_config == bundle.spec.config == MODEL_CFG
    assert bundle.dataset == "tiny" and bundle.num_items == N_ITEMS
    assert bundle.spec.n_items == N_ITEMS and bundle.spec.config.max_seq_len == 3
    assert bundle.protocol == {"exclude_history": True, "k_core": 5}
    assert sorted(p.name for p in path.iterdir()) == sorted([*BUNDLE_FILES, "manifest.json"])


def test_model_json_stores_the_models_settings_once_inside_the_spec(tmp_path: Path) -> None:
    path, _ = _write(tmp_path / "b")
    meta = json.loads((path / "model.json").read_text())
    assert meta["format_version"] == BUNDLE_FORMAT_VERSION == 2
    assert "model" not in meta and meta["spec"]["config"] == MODEL_CFG.to_dict()
    assert set(meta["spec"]) == {"n_items", "item_dim", "causal", "backbone", "config"}
    _write(tmp_path / "same", model_config=MODEL_CFG)  # a caller that still passes the settings: checked, not stored
    with pytest.raises(DataError, match=r"model_config differs from the spec's settings"):
        _write(tmp_path / "other", model_config=ModelConfig(backbone="lean", d_model=8, n_heads=2, dropout=0.5))


def test_a_format_1_bundle_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path, _ = _write(tmp_path / "b")
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, "format_version": 1}))
    with pytest.raises(DataError, match=r"bundle format 1, this code reads 2; retrain and register the model"):
        load_bundle(path)


def test_a_bundle_loads_and_scores_without_pydantic(tmp_path: Path) -> None:
    """Serving hosts may have only torch, safetensors, numpy, pandas and pyarrow: the model package,
    the bundle and the recommender must not need pydantic (or the config module) to load one."""
    import subprocess
    import sys

    path, _ = _write(tmp_path / "b")
    code = ("import sys; sys.modules['pydantic'] = None; sys.modules['yaml'] = None\n"
            "from lite_rec.infer.recommender import Recommender\n"
            f"rec = Recommender.from_path({str(path)!r})\n"
            "assert rec.spec.config.max_seq_len == 3 and len(rec.recommend([['a', 'b']], k=2)[0]) == 2\n"
            "assert 'lite_rec.core.config' not in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[3])
    assert done.returncode == 0, done.stderr


def test_manifest_lists_the_hash_of_every_file(tmp_path: Path) -> None:
    path, _ = _write(tmp_path / "b")
    manifest = json.loads((path / "manifest.json").read_text())
    assert set(manifest["files"]) == set(BUNDLE_FILES)
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == sha256_file(path / name)


def test_save_leaves_no_temp_dirs_and_refuses_to_overwrite_silently(tmp_path: Path) -> None:
    path, _ = _write(tmp_path / "b")
    first = load_bundle(path).fingerprint
    with pytest.raises(DataError, match="already exists"):
        _write(tmp_path / "b")
    _write(tmp_path / "b", overwrite=True, dataset="other")
    assert load_bundle(path).dataset == "other"
    assert load_bundle(path).fingerprint != first
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


def test_failed_save_leaves_nothing_under_the_final_name(tmp_path: Path) -> None:
    bad_state = {"x": torch.zeros(2, 2), "y": "not a tensor"}  # fails inside the temp dir
    with pytest.raises(AttributeError):
        _write(tmp_path / "b", state_dict=bad_state)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", [*BUNDLE_FILES])
def test_altered_file_is_refused_naming_it(tmp_path: Path, name: str) -> None:
    path, _ = _write(tmp_path / "b")
    with open(path / name, "r+b") as fh:  # flip one byte in the middle
        fh.seek((path / name).stat().st_size // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(CacheMismatch, match=name.replace(".", r"\.")):
        load_bundle(path)


def test_missing_manifest_means_incomplete(tmp_path: Path) -> None:
    path, _ = _write(tmp_path / "b")
    (path / "manifest.json").unlink()
    with pytest.raises(DataError, match=r"manifest\.json: missing; the bundle is incomplete"):
        load_bundle(path)


def test_missing_listed_file_is_refused(tmp_path: Path) -> None:
    path, _ = _write(tmp_path / "b")
    (path / "popularity.parquet").unlink()
    with pytest.raises(DataError, match=r"popularity\.parquet: listed in the manifest but missing"):
        load_bundle(path)


def test_truncated_manifest_is_refused(tmp_path: Path) -> None:
    path, _ = _write(tmp_path / "b")
    text = (path / "manifest.json").read_text()
    (path / "manifest.json").write_text(text[: len(text) // 2])
    with pytest.raises(DataError, match="not valid JSON"):
        load_bundle(path)


def test_not_a_bundle_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no bundle directory"):
        load_bundle(tmp_path / "nope")


def test_items_must_be_dense_1_to_n(tmp_path: Path) -> None:
    items = _items()
    items.loc[items["item_idx"] == 7, "item_idx"] = 8
    with pytest.raises(DataError, match=r"item_idx must be exactly 1\.\.7"):
        _write(tmp_path / "b", items=items)


def test_duplicate_item_ids_are_refused(tmp_path: Path) -> None:
    items = _items()
    items.loc[items["item_idx"] == 2, "item_id"] = "a"
    with pytest.raises(DataError, match=r"duplicate item_id\(s\) \['a'\]"):
        _write(tmp_path / "b", items=items)


def test_item_count_must_match_the_model(tmp_path: Path) -> None:
    items = _items()[lambda d: d["item_idx"] <= 6]
    pop = _popularity()[lambda d: d["item_idx"] <= 6]
    with pytest.raises(DataError, match="model scores 7 items but the items table has 6"):
        _write(tmp_path / "b", items=items, popularity=pop)


def test_build_bundle_from_a_training_run_and_processed_data(tmp_path: Path) -> None:
    from lite_rec.core.config import build_config
    from lite_rec.train.checkpoint import save_model

    cfg = build_config("ml-100k", {"data_dir": str(tmp_path / "data"), "model": MODEL_CFG.to_dict()})
    processed = cfg.processed_dir
    processed.mkdir(parents=True)
    _items().to_parquet(processed / "items.parquet", index=False)
    pd.DataFrame(
        {"user_idx": [0, 1], "train_seq": [[4, 4, 2], [4, 7]], "valid_item_idx": [1, 1], "test_item_idx": [3, 3]}
    ).to_parquet(processed / "sequences.parquet", index=False)
    vectors = torch.randn(N_ITEMS + 1, 5)
    vectors[0] = 0
    model, _ = build_model(MODEL_CFG, N_ITEMS, vectors, causal=False)
    save_model(model, tmp_path / "run", {"backbone_init": "random init (test)", "protocol": {"exclude_history": True},
                                         "config": cfg.model_dump(mode="json", exclude={"model"})})
    bundle = load_bundle(build_bundle(cfg, tmp_path / "run", tmp_path / "bundle"))
    # Counts over train_seq only (valid/test targets never leak): item 4 x3, 2 x1, 7 x1, others 0.
    assert bundle.popularity["item_idx"].tolist()[:3] == [4, 2, 7]
    assert bundle.popularity["count"].tolist()[:4] == [3, 1, 1, 0]
    assert bundle.protocol["k_core"] == 5 and bundle.protocol["exclude_history"] is True
    assert bundle.extra["backbone_init"] == "random init (test)"
    assert len(bundle.extra["data_fingerprint"]) == 64
    assert torch.equal(bundle.tensors["head.weight"], model.state_dict()["head.weight"])
    assert bundle.spec == model.spec  # the run's own settings, whatever the caller's config says


def test_build_bundle_names_what_is_missing(tmp_path: Path) -> None:
    from lite_rec.core.config import build_config

    cfg = build_config("ml-100k", {"data_dir": str(tmp_path / "data")})
    with pytest.raises(DataError, match=r"run/model\.safetensors: missing"):
        build_bundle(cfg, tmp_path / "run", tmp_path / "bundle")


def test_the_manifest_records_the_request_fields_the_model_reads(tmp_path: Path) -> None:
    from tests.helpers.context_models import context_model, save_context_bundle

    ids = [f"i{i}" for i in range(1, 9)]
    path = save_context_bundle(tmp_path / "ctx", context_model(n_items=8, window=3), ids)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["context_fields"] == ["ts", "rating", "request_time"] == load_bundle(path).context_fields
    ids_only = save_context_bundle(tmp_path / "ids", context_model(n_items=8, window=3, time_gaps=False, ratings=False,
                                                                   time_bias=False, query_time=False), ids)
    assert json.loads((ids_only / "manifest.json").read_text())["context_fields"] == [] == load_bundle(ids_only).context_fields
    (path / "manifest.json").write_text(json.dumps({**manifest, "context_fields": []}))  # a manifest that lies
    with pytest.raises(DataError, match=r"says the model reads \[\], its settings \(model.json\) read \['ts', 'rating'"):
        load_bundle(path)
    del manifest["context_fields"]  # a bundle written before the field was recorded: read from the settings
    (path / "manifest.json").write_text(json.dumps(manifest))
    assert load_bundle(path).context_fields == ["ts", "rating", "request_time"]
