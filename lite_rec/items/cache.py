"""The item-vector cache: item LLM outputs computed once per (item text, encoder), reused after.

Why: The paper's item LLM is run offline; its vectors are inputs to training, evaluation and
serving. Encoding every item is the slowest part of a small run on CPU, and items rarely change
between runs, so a re-run encodes only items whose text is new or changed (docs/design.md,
"Performance shape").

Why a manifest: a cache that silently belongs to another encoder or another item set gives
wrong recommendations without an error. The manifest records what the vectors depend on:
- the encoder's identity and the sha256 of its weight files, its pooling and ``max_tokens``
  (any change -> every item is re-encoded);
- the item order (``item_ids``: row i of the vectors is item_idx i) and each item's text
  sha256 (a row is reused only when its text hash is unchanged);
- the sha256 of the vectors file itself (a half-written or edited file is detected).

Layout: ``<runs_dir>/item_vectors/<encoder slug>/{vectors.safetensors, manifest.json}``.
Writes go to a temporary folder, are validated by loading them back, and only then replace
the old files (vectors first, then the manifest that vouches for them), so bad input or a
crash never corrupts an earlier good cache.

Needs torch, pandas, pyarrow and safetensors only (no duckdb, prefect or mlflow).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lite_rec.core.errors import CacheMismatch, DataError
from lite_rec.core.io import sha256_file
from lite_rec.items.encoder import ItemEncoder, encoder_id, weights_fingerprint
from lite_rec.items.text import render_item_texts

if TYPE_CHECKING:
    from lite_rec.core.config import ItemEncoderConfig, LiteRecConfig

__all__ = ["ItemVectors", "cache_dir_for", "encoder_slug", "load_item_vectors", "load_or_encode_items", "vectors_for_texts"]

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
VECTORS = "vectors.safetensors"
FORMAT = "lite-rec/item-vectors/v1"
POOLING = "mean"  # the paper's Eq. 3
_IDENTITY_KEYS = ("encoder_id", "weights_sha256", "pooling", "max_tokens")
ADDED = "added"  # sub-folder of a cache: texts encoded for catalog updates (vectors_for_texts), keyed by text sha256


@dataclass(frozen=True)
class ItemVectors:
    """Item LLM vectors in item_idx order, with the manifest that says what they belong to."""

    vectors: torch.Tensor  # (N+1, D) float32, row 0 = zeros (padding), row i = item_idx i
    manifest: dict[str, Any]  # encoder id, weights sha256, dim, item_ids, per-item text sha256
    encoded: int = 0  # items encoded by the call that returned this (0 = all from the cache)

    @property
    def item_ids(self) -> list[str]:
        return list(self.manifest["item_ids"])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


def encoder_slug(model: str) -> str:
    """Folder name for an encoder: ``org--name`` for hub ids, ``<folder>-<8 hex>`` for paths."""
    ident = encoder_id(model)
    if Path(ident).is_absolute():
        tag = hashlib.sha256(ident.encode()).hexdigest()[:8]
        return f"{re.sub(r'[^A-Za-z0-9._-]+', '-', Path(ident).name) or 'model'}-{tag}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", ident.replace("/", "--"))


def cache_dir_for(cfg: "LiteRecConfig") -> Path:
    """Where the item vectors of this dataset and encoder live."""
    return cfg.runs_dir / "item_vectors" / encoder_slug(cfg.item_encoder.model)


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _describe_id_change(cached: list[str], expected: list[str]) -> str:
    cached_set, expected_set = set(cached), set(expected)
    removed = [i for i in cached if i not in expected_set]
    added = [i for i in expected if i not in cached_set]
    parts = [f"cache has {len(cached)} items, expected {len(expected)}"]
    if added:
        parts.append(f"not in cache: {added[:5]}{' ...' if len(added) > 5 else ''}")
    if removed:
        parts.append(f"no longer expected: {removed[:5]}{' ...' if len(removed) > 5 else ''}")
    first = next((k for k, (a, b) in enumerate(zip(cached, expected)) if a != b), None)
    if first is not None:
        parts.append(f"first difference at item_idx {first + 1}: cached {cached[first]!r}, expected {expected[first]!r}")
    return "; ".join(parts)


def load_item_vectors(
    cache_dir: Path,
    expected_item_ids: list[str] | None = None,
    *,
    expected_weights_sha256: str | None = None,
) -> ItemVectors:
    """Load and verify a cache; raise :class:`CacheMismatch` naming the file and what is wrong.

    Checks the manifest's form, the vectors file's sha256, the tensor's shape and dtype, that
    row 0 is zeros, and, when given, the item order and the encoder weights' fingerprint.
    """
    cache_dir = Path(cache_dir)
    mpath, vpath = cache_dir / MANIFEST, cache_dir / VECTORS
    if not mpath.is_file() or not vpath.is_file():
        raise CacheMismatch(f"{cache_dir}: no item-vector cache here (need {MANIFEST} and {VECTORS})")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CacheMismatch(f"{mpath}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CacheMismatch(f"{mpath}: not an item-vector manifest (field 'format' should be {FORMAT!r})")
    required = (*_IDENTITY_KEYS, "dim", "item_ids", "text_sha256", "vectors_sha256")
    absent = [k for k in required if k not in manifest]
    if absent:
        raise CacheMismatch(f"{mpath}: missing field(s) {', '.join(absent)}")
    item_ids, text_sha = manifest["item_ids"], manifest["text_sha256"]
    if len(item_ids) != len(text_sha):
        raise CacheMismatch(f"{mpath}: {len(item_ids)} item_ids but {len(text_sha)} text_sha256 entries")
    actual = sha256_file(vpath)
    if actual != manifest["vectors_sha256"]:
        raise CacheMismatch(f"{vpath}: sha256 {actual[:12]}... does not match {mpath} (vectors_sha256 {str(manifest['vectors_sha256'])[:12]}...)")
    try:
        vectors = load_file(str(vpath))["vectors"]  # (N+1, D)
    except (SafetensorError, KeyError, OSError) as exc:
        raise CacheMismatch(f"{vpath}: cannot read tensor 'vectors' ({exc})") from None
    shape = (len(item_ids) + 1, int(manifest["dim"]))
    if vectors.dtype != torch.float32 or tuple(vectors.shape) != shape:
        raise CacheMismatch(f"{vpath}: tensor is {vectors.dtype} {tuple(vectors.shape)}, manifest says float32 {shape}")
    if bool(vectors[0].any()):
        raise CacheMismatch(f"{vpath}: row 0 (padding) is not all zeros")
    if expected_item_ids is not None and list(item_ids) != list(expected_item_ids):
        raise CacheMismatch(f"{mpath}: item order does not match ({_describe_id_change(item_ids, list(expected_item_ids))})")
    if expected_weights_sha256 is not None and manifest["weights_sha256"] != expected_weights_sha256:
        raise CacheMismatch(
            f"{mpath}: encoder weights {manifest['weights_sha256']} differ from the current "
            f"{expected_weights_sha256} (encoder {manifest['encoder_id']})"
        )
    return ItemVectors(vectors=vectors, manifest=manifest)


def _read_items(path: Path, dataset: str) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path} does not exist: run `lite-rec ingest {dataset}` first")
    try:
        items = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a broken file
        raise DataError(f"{path}: cannot read as Parquet ({type(exc).__name__}: {exc})") from None
    if len(items) == 0:
        raise DataError(f"{path}: no items")
    return items


def _identity(enc: "ItemEncoderConfig", fingerprint: str) -> dict[str, Any]:
    return {"encoder_id": encoder_id(enc.model), "weights_sha256": fingerprint, "pooling": POOLING, "max_tokens": enc.max_tokens}


def _previous(cache_dir: Path, identity: dict[str, Any]) -> tuple[ItemVectors | None, str]:
    """The old cache if it is usable with the current encoder, else None and the reason."""
    try:
        old = load_item_vectors(cache_dir)
    except CacheMismatch as exc:
        return None, "no cache" if not (cache_dir / MANIFEST).exists() else f"unusable cache: {exc}"
    changed = [k for k in _IDENTITY_KEYS if old.manifest[k] != identity[k]]
    if changed:
        what = ", ".join(f"{k} {old.manifest[k]!r} -> {identity[k]!r}" for k in changed)
        return None, f"encoder changed ({what})"
    return old, "cache matches encoder"


def _write_atomically(cache_dir: Path, vectors: torch.Tensor, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write into a temp folder, validate by loading back, then replace the live files."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir.parent / f".{cache_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file({"vectors": vectors.contiguous()}, str(tmp / VECTORS), metadata={"format": FORMAT})
        manifest = {**manifest, "vectors_sha256": sha256_file(tmp / VECTORS)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        load_item_vectors(tmp, manifest["item_ids"], expected_weights_sha256=manifest["weights_sha256"])
        os.replace(tmp / VECTORS, cache_dir / VECTORS)
        os.replace(tmp / MANIFEST, cache_dir / MANIFEST)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def load_or_encode_items(cfg: "LiteRecConfig", *, progress: bool = True) -> ItemVectors:
    """Item vectors for ``<processed_dir>/items.parquet``, encoding only what the cache lacks.

    A cached row is reused when the encoder identity (id, weights sha256, pooling, max_tokens)
    matches and an item with the same text hash is in the cache; everything else is encoded.
    The result is always in the current item_idx order, so removed or re-indexed items
    rebuild the matrix in the new order.
    """
    started = time.perf_counter()
    items_path = cfg.processed_dir / "items.parquet"
    items = _read_items(items_path, cfg.dataset.name)
    texts = render_item_texts(items, cfg.dataset, source=items_path)
    item_ids = [str(i) for i in items["item_id"].tolist()]
    text_sha = [_sha256_text(t) for t in texts]

    enc = cfg.item_encoder
    encoder: ItemEncoder | None = None
    fingerprint = weights_fingerprint(enc.model)
    if fingerprint is None:  # a hub model not downloaded yet: loading it fetches the files
        encoder = ItemEncoder(enc)
        fingerprint = encoder.fingerprint
        if fingerprint is None:
            raise CacheMismatch(f"item_encoder.model={enc.model!r}: loaded, but its weight files cannot be found to fingerprint")
    identity = _identity(enc, fingerprint)
    cache_dir = cache_dir_for(cfg)
    old, reason = _previous(cache_dir, identity)

    if old is not None and old.manifest["item_ids"] == item_ids and old.manifest["text_sha256"] == text_sha:
        log.info("item vectors: all %d items from %s", len(item_ids), cache_dir)
        return old

    old_row = {} if old is None else {h: k + 1 for k, h in enumerate(old.manifest["text_sha256"])}
    todo = [k for k, h in enumerate(text_sha) if h not in old_row]
    level = logging.WARNING if reason.startswith(("unusable", "encoder changed")) else logging.INFO
    log.log(level, "item vectors: %d reused, %d to encode (%s) in %s", len(texts) - len(todo), len(todo), reason, cache_dir)
    fresh = None
    if todo:
        encoder = encoder or ItemEncoder(enc)
        fresh = encoder.encode([texts[k] for k in todo], progress=progress)  # (n_todo, D)
    dim = fresh.shape[1] if fresh is not None else old.vectors.shape[1]  # type: ignore[union-attr]
    vectors = torch.zeros(len(texts) + 1, dim, dtype=torch.float32)  # (N+1, D)
    reuse = [k for k, h in enumerate(text_sha) if h in old_row]
    if reuse:
        src = torch.tensor([old_row[text_sha[k]] for k in reuse], dtype=torch.long)
        vectors[torch.tensor(reuse, dtype=torch.long) + 1] = old.vectors[src]  # type: ignore[union-attr]
    if fresh is not None:
        vectors[torch.tensor(todo, dtype=torch.long) + 1] = fresh

    manifest = {
        "format": FORMAT,
        "encoder": enc.model,
        **identity,
        "dim": int(dim),
        "count": len(item_ids),
        "dtype": "float32",
        "item_ids": item_ids,
        "text_sha256": text_sha,
        "last_update": {
            "encoded": len(todo),
            "reused": len(reuse),
            "reason": reason,
            "device": str(encoder.device) if encoder is not None else None,
            "seconds": round(time.perf_counter() - started, 3),
        },
    }
    manifest = _write_atomically(cache_dir, vectors, manifest)
    return ItemVectors(vectors=vectors, manifest=manifest, encoded=len(todo))


def vectors_for_texts(cfg: "LiteRecConfig", texts: list[str], *, progress: bool = True) -> tuple[torch.Tensor, int]:
    """(M, D) item-LLM vectors of `texts` and how many had to be encoded: the catalog update's
    way through the cache (``lite-rec add-items``).

    A text whose sha256 is in the dataset's cache or in its ``added/`` store (texts encoded by
    earlier updates) is read from there, so an item whose text is already known, or a file sent
    twice, encodes nothing; only the rest go through the encoder, and are appended to ``added/``
    (written atomically like the cache itself). Both stores are used only when they were made
    with the current encoder (id, weights, pooling, max_tokens).
    """
    enc = cfg.item_encoder
    encoder: ItemEncoder | None = None
    fingerprint = weights_fingerprint(enc.model)
    if fingerprint is None:  # a hub model not downloaded yet
        encoder = ItemEncoder(enc)
        fingerprint = encoder.fingerprint
    identity = _identity(enc, fingerprint or "unknown")
    main_dir = cache_dir_for(cfg)
    stores = [old for old, _ in (_previous(main_dir, identity), _previous(main_dir / ADDED, identity)) if old is not None]
    known: dict[str, torch.Tensor] = {}
    for store in stores:
        for row, sha in enumerate(store.manifest["text_sha256"]):
            known.setdefault(sha, store.vectors[row + 1])
    shas = [_sha256_text(t) for t in texts]
    todo = list(dict.fromkeys(sha for sha in shas if sha not in known))  # each new text once
    if todo:
        encoder = encoder or ItemEncoder(enc)
        first = {sha: texts[shas.index(sha)] for sha in todo}
        fresh = encoder.encode([first[sha] for sha in todo], progress=progress)  # (n_todo, D)
        known.update(zip(todo, fresh))
        added = next((s for s in stores if s.manifest.get("store") == ADDED), None)
        old_shas = list(added.manifest["text_sha256"]) if added is not None else []
        rows = [added.vectors[1:]] if added is not None else []
        vectors = torch.cat([torch.zeros(1, fresh.shape[1]), *rows, fresh])  # (1 + old + new, D), row 0 padding
        all_shas = old_shas + todo
        manifest = {"format": FORMAT, "store": ADDED, "encoder": enc.model, **identity, "dim": int(fresh.shape[1]),
                    "count": len(all_shas), "dtype": "float32", "item_ids": all_shas, "text_sha256": all_shas}
        _write_atomically(main_dir / ADDED, vectors.float(), manifest)
    log.info("item vectors for %d texts: %d from the cache, %d encoded", len(texts), len(texts) - len(todo), len(todo))
    return torch.stack([known[sha] for sha in shas]).float(), len(todo)
