"""Turn a finished training run into a serving bundle (``infer.bundle``'s format).

Why on the training side: a bundle is built from what only training has (the run folder's
weights and the processed data it was trained on, whose popularity counts the fallback list);
serving only ever reads bundles, so it never imports this module or the data stage.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
from safetensors.torch import load_file

from lite_rec.core.config import LiteRecConfig
from lite_rec.core.errors import DataError
from lite_rec.core.io import sha256_file
from lite_rec.eval.popularity import item_popularity
from lite_rec.infer.bundle import ITEMS_FILE, META_FILE, WEIGHTS_FILE, save_bundle
from lite_rec.model.spec import ModelSpec

__all__ = ["build_bundle", "bundle_run"]


def _data_fingerprint(processed_dir: Path) -> str:
    """sha256 over the two processed files a bundle is built from (ids, titles, sequences)."""
    digest = hashlib.sha256()
    for name in ("items.parquet", "sequences.parquet"):
        digest.update(f"{name}:{sha256_file(processed_dir / name)};".encode())
    return digest.hexdigest()


def build_bundle(cfg: LiteRecConfig, model_dir: Path | str, out_dir: Path | str, *, overwrite: bool = False) -> Path:
    """Bundle a finished training run (``train_model``'s out_dir) with the processed data it used.

    Reads ``model.safetensors`` + ``model.json`` from `model_dir` and ``items.parquet`` +
    ``sequences.parquet`` from ``cfg.processed_dir``; popularity counts the training sequences,
    exactly as the popularity baseline does. A model that reads an input context (time gaps,
    ratings, time bias, the request time) bundles like any other: its bundle records which request
    fields it reads (``Bundle.context_fields``), and serving builds them from each request.
    """
    return bundle_run(model_dir, cfg.processed_dir, out_dir, dataset=cfg.dataset.name, overwrite=overwrite,
                      protocol={"k_core": cfg.dataset.k_core, "min_rating": cfg.dataset.min_rating},
                      item_encoder=cfg.item_encoder.model)


def bundle_run(model_dir: Path | str, processed_dir: Path | str, out_dir: Path | str, *, dataset: str,
               protocol: dict | None = None, item_encoder: str | None = None, overwrite: bool = False) -> Path:
    """:func:`build_bundle` without a config: a run folder and the processed folder it was trained
    on (``items.parquet``, ``sequences.parquet``) -> a bundle; `protocol` adds to the run's own
    record. Imports no duckdb, prefect or mlflow: it runs on a GPU worker that trained the model
    (``benchmarks/serving_path_eval.py``)."""
    model_dir, processed = Path(model_dir), Path(processed_dir)
    for path in (model_dir / WEIGHTS_FILE, model_dir / META_FILE, processed / ITEMS_FILE, processed / "sequences.parquet"):
        if not path.exists():
            raise DataError(f"{path}: missing; train the model and run the data stage first")
    try:
        meta = json.loads((model_dir / META_FILE).read_text(encoding="utf-8"))
        # the spec holds the settings the run was trained with (they win over the caller's config)
        spec = ModelSpec.from_dict(meta["spec"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{model_dir / META_FILE}: not a training run's model.json ({exc})") from None
    items = pd.read_parquet(processed / ITEMS_FILE, columns=["item_idx", "item_id", "title"])
    sequences = pd.read_parquet(processed / "sequences.parquet", columns=["train_seq"])
    num_items = len(items)
    counts = item_popularity(sequences, num_items)[1:].long().tolist()  # (N,) item_idx 1..N
    popularity = pd.DataFrame({"item_idx": range(1, num_items + 1), "count": counts})
    extra = {
        "backbone_init": meta.get("backbone_init", "unknown"),
        "data_fingerprint": _data_fingerprint(processed),
        "item_encoder": item_encoder or "unknown",
        "best": meta.get("best"),
    }
    return save_bundle(
        out_dir, spec=spec, state_dict=load_file(str(model_dir / WEIGHTS_FILE), device="cpu"), items=items,
        popularity=popularity, dataset=dataset, protocol={**dict(meta.get("protocol") or {}), **(protocol or {})},
        extra=extra, overwrite=overwrite,
    )
