"""The model bundle: one self-contained, code-free directory that holds what serving needs.

Why a bundle and not "the training output folder": serving, the MLflow pyfunc and promotion all
need the same few things (weights, the item vectors or id table, the id mapping, titles, a
popularity list for users with no history, and the settings that built the model), and none of
them may execute code on load. So a bundle is plain data:

- ``model.safetensors`` — every tensor of the recommendation LLM, the item projection head and
  the item-side table (text vectors and/or id embeddings), keyed as in the model's state dict;
- ``model.json`` — the spec that rebuilds the model without downloading anything
  (``lite_rec.model.spec.ModelSpec.to_dict()``, which holds the model's settings, its
  ``ModelConfig``, once), the dataset name, the item count, the evaluation protocol and free-form
  ``extra`` facts;
- ``items.parquet`` — ``item_idx`` (1..N, 0 = padding), ``item_id`` (raw id), ``title``;
- ``popularity.parquet`` — ``item_idx``, ``count`` of training interactions (every item 1..N,
  most popular first, ties by smaller item_idx as in ``lite_rec.eval.popularity``): the fallback for
  users with no history;
- ``manifest.json`` — sha256 and size of every other file, written *last*, and the request
  fields the model reads besides item ids (``context_fields``: ``ts``, ``rating``,
  ``request_time``, from ``lite_rec.model.context.context_fields``; [] for an ids-only model),
  so a reader of the bundle sees what a request must carry without rebuilding the model.

The manifest is the commit record: a directory without a valid manifest, or whose files do not
hash to it, is an incomplete or tampered bundle and :func:`load_bundle` refuses it, naming the
file. :func:`save_bundle` writes into a temporary sibling directory and renames it into place,
so a crash never leaves a half-written bundle under the final name. No pickle anywhere.

Format 2 stores the model's settings once, inside the spec; format 1 (settings beside the spec
and again under ``model``) is refused with a message to retrain. Loading needs no
pydantic: a bundle loads where only torch, safetensors, numpy, pandas and pyarrow are installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lite_rec.core.errors import CacheMismatch, DataError
from lite_rec.core.io import sha256_file
from lite_rec.model.context import context_fields
from lite_rec.model.spec import ModelConfig, ModelSpec

__all__ = [
    "BUNDLE_FILES",
    "BUNDLE_FORMAT_VERSION",
    "Bundle",
    "load_bundle",
    "save_bundle",
    "verify_bundle",
]

BUNDLE_FORMAT_VERSION = 2
WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"
ITEMS_FILE = "items.parquet"
POPULARITY_FILE = "popularity.parquet"
MANIFEST_FILE = "manifest.json"
BUNDLE_FILES: tuple[str, ...] = (WEIGHTS_FILE, META_FILE, ITEMS_FILE, POPULARITY_FILE)


@dataclass(frozen=True)
class Bundle:
    """A loaded, verified bundle. `items` is ordered by item_idx 1..N; row r is item_idx r + 1."""

    path: Path
    dataset: str
    num_items: int  # N real items; tensors over items have N + 1 rows (row 0 = padding)
    spec: ModelSpec  # rebuilds the architecture (model_from_spec); spec.config holds the model's settings
    protocol: dict[str, Any]  # masking, k-core, max length... recorded with every result
    extra: dict[str, Any]  # provenance facts (backbone init, data fingerprint, ...)
    tensors: dict[str, torch.Tensor]  # the model's state dict
    items: pd.DataFrame  # item_idx, item_id, title
    popularity: pd.DataFrame  # item_idx, count (every item 1..N, most popular first)
    manifest: dict[str, Any] = field(repr=False)

    @property
    def model_config(self) -> ModelConfig:
        """The model's settings (``spec.config``)."""
        return self.spec.config

    @property
    def context_fields(self) -> list[str]:
        """The request fields the model reads besides item ids (``ts``, ``rating``, ``request_time``)."""
        return context_fields(self.spec.config)

    @property
    def fingerprint(self) -> str:
        """sha256 over the manifest: one id for "these exact weights and tables"."""
        return hashlib.sha256(json.dumps(self.manifest["files"], sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Input checks (a bundle with a broken id table would serve wrong items silently)


def _check_items(items: pd.DataFrame, num_items: int, origin: str) -> pd.DataFrame:
    missing = {"item_idx", "item_id", "title"} - set(items.columns)
    if missing:
        raise DataError(f"{origin}: items table lacks column(s) {sorted(missing)} (needs item_idx, item_id, title)")
    out = items[["item_idx", "item_id", "title"]].sort_values("item_idx").reset_index(drop=True)
    idx = out["item_idx"].to_numpy()
    if len(out) != num_items or (len(out) and (idx[0] != 1 or (idx[1:] - idx[:-1] != 1).any())):
        raise DataError(f"{origin}: item_idx must be exactly 1..{num_items} (0 is padding), got {len(out)} rows")
    if out["item_id"].isna().any():
        raise DataError(f"{origin}: item_id has missing values")
    out["item_id"] = out["item_id"].astype(str)
    dup = out["item_id"][out["item_id"].duplicated()]
    if len(dup):
        raise DataError(f"{origin}: duplicate item_id(s) {dup.head(5).tolist()}")
    out["item_idx"] = out["item_idx"].astype("int64")
    out["title"] = out["title"].astype(object).where(out["title"].notna(), "").astype(str)
    return out


def _check_popularity(popularity: pd.DataFrame, num_items: int, origin: str) -> pd.DataFrame:
    missing = {"item_idx", "count"} - set(popularity.columns)
    if missing:
        raise DataError(f"{origin}: popularity table lacks column(s) {sorted(missing)} (needs item_idx, count)")
    pop = popularity[["item_idx", "count"]].astype("int64")
    if ((pop["item_idx"] < 1) | (pop["item_idx"] > num_items)).any() or pop["item_idx"].duplicated().any():
        raise DataError(f"{origin}: popularity item_idx must be unique values in 1..{num_items}")
    if (pop["count"] < 0).any():
        raise DataError(f"{origin}: popularity counts must be >= 0")
    # Most popular first, ties by item_idx: the fallback list is deterministic.
    return pop.sort_values(["count", "item_idx"], ascending=[False, True], kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# Save


def save_bundle(
    out_dir: Path | str,
    *,
    spec: ModelSpec | dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    items: pd.DataFrame,
    popularity: pd.DataFrame,
    dataset: str,
    protocol: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    overwrite: bool = False,
    model_config: ModelConfig | None = None,
) -> Path:
    """Write a bundle to `out_dir` atomically (temp sibling + rename) and return its path.

    `spec` is the model's ``ModelSpec`` (or its ``to_dict()``), which carries its settings;
    `model_config`, if given, must be those settings (callers that still pass it get checked,
    not a second copy). `state_dict` is ``model.state_dict()``; tensors are copied to CPU and
    made contiguous (tied weights become separate copies, which ``load_state_dict`` fills back
    into one parameter).
    """
    out_dir = Path(out_dir)
    if not isinstance(spec, ModelSpec):
        try:
            spec = ModelSpec.from_dict(spec)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"save_bundle: malformed model spec ({exc})") from None
    if model_config is not None and model_config != spec.config:
        raise DataError("save_bundle: model_config differs from the spec's settings (spec.config), which the "
                        "bundle stores; pass the spec alone")
    num_items = len(items)
    items_ok = _check_items(items, num_items, "save_bundle")
    pop_ok = _check_popularity(popularity, num_items, "save_bundle")
    if not state_dict:
        raise DataError("save_bundle: the state dict is empty; nothing to serve")
    if spec.n_items != num_items:
        raise DataError(f"save_bundle: the model scores {spec.n_items} items but the items table has {num_items}")
    if out_dir.exists() and not overwrite:
        raise DataError(f"{out_dir}: a bundle already exists there (pass overwrite=True to replace it)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "lite-rec-bundle"})
        meta = {
            "format_version": BUNDLE_FORMAT_VERSION,
            "dataset": dataset,
            "num_items": num_items,
            "spec": spec.to_dict(),
            "protocol": protocol or {},
            "extra": extra or {},
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
        items_ok.to_parquet(tmp / ITEMS_FILE, index=False)
        pop_ok.to_parquet(tmp / POPULARITY_FILE, index=False)
        files = {name: {"sha256": sha256_file(tmp / name), "bytes": (tmp / name).stat().st_size} for name in BUNDLE_FILES}
        manifest = {"format_version": BUNDLE_FORMAT_VERSION, "files": files, "context_fields": context_fields(spec.config)}
        # The manifest goes last: its presence means every file above is complete.
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
        if out_dir.exists():
            trash = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out_dir, trash)
            os.replace(tmp, out_dir)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


# ---------------------------------------------------------------------------------------------
# Load


def _read_manifest(path: Path) -> dict[str, Any]:
    mpath = path / MANIFEST_FILE
    if not path.is_dir():
        raise DataError(f"{path}: no bundle directory there")
    if not mpath.exists():
        raise DataError(f"{mpath}: missing; the bundle is incomplete (was it written by save_bundle?)")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{mpath}: not valid JSON ({exc}); the bundle is incomplete") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or set(files) != set(BUNDLE_FILES):
        raise DataError(f"{mpath}: must list exactly {list(BUNDLE_FILES)}")
    if manifest.get("format_version") != BUNDLE_FORMAT_VERSION:
        raise DataError(f"{mpath}: bundle format {manifest.get('format_version')!r}, this code reads {BUNDLE_FORMAT_VERSION}; "
                        "retrain and register the model with this lite-rec, or serve it with the lite-rec that wrote it")
    return manifest


def verify_bundle(path: Path | str) -> dict[str, Any]:
    """Check every file against the manifest; returns the manifest or raises naming the file."""
    path = Path(path)
    manifest = _read_manifest(path)
    for name, entry in manifest["files"].items():
        fpath = path / name
        if not fpath.exists():
            raise DataError(f"{fpath}: listed in the manifest but missing; the bundle is incomplete")
        if fpath.stat().st_size != entry.get("bytes") or sha256_file(fpath) != entry.get("sha256"):
            raise CacheMismatch(f"{fpath}: content does not match its sha256 in {MANIFEST_FILE}; refusing this bundle")
    return manifest


def load_bundle(path: Path | str) -> Bundle:
    """Verify and read a bundle; every failure names the file at fault."""
    path = Path(path)
    manifest = verify_bundle(path)
    try:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
        num_items = int(meta["num_items"])
        spec = ModelSpec.from_dict(meta["spec"])  # a spec that does not build is malformed metadata, named here
        dataset = str(meta["dataset"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path / META_FILE}: malformed bundle metadata ({exc})") from None
    recorded = manifest.get("context_fields")  # bundles written before it was recorded have none
    if recorded is not None and recorded != context_fields(spec.config):
        raise DataError(f"{path / MANIFEST_FILE}: says the model reads {recorded}, its settings ({META_FILE}) read "
                        f"{context_fields(spec.config)}; refusing this bundle")
    try:
        tensors = load_file(str(path / WEIGHTS_FILE), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise DataError(f"{path / WEIGHTS_FILE}: cannot read the weights ({exc})") from None
    items = _check_items(pd.read_parquet(path / ITEMS_FILE), num_items, str(path / ITEMS_FILE))
    popularity = _check_popularity(pd.read_parquet(path / POPULARITY_FILE), num_items, str(path / POPULARITY_FILE))
    return Bundle(
        path=path,
        dataset=dataset,
        num_items=num_items,
        spec=spec,
        protocol=dict(meta.get("protocol") or {}),
        extra=dict(meta.get("extra") or {}),
        tensors=tensors,
        items=items,
        popularity=popularity,
        manifest=manifest,
    )
