"""A new catalog for a trained model, without retraining: new items appended, changed ones re-read.

Why this works only for some models: an item's output vector (``LiteRecModel.head_weight``) must
exist for an item that was never trained on. With ``model.head=inductive`` it is the projection of
the item's cached text vector plus a learned id part that a new item does not have (zeros), and
its input vector (``item_repr`` text or text+id) is the adapted text vector (plus a zero id
embedding). So a new item needs one thing only: its text vector from the item LLM. The paper's
linear head has one learned row per training item and nothing to compute a new row from: such a
model is refused (:func:`check_extendable`) with what to do instead.

The rules (docs/serving.md, "Adding items without retraining"):

- an ``item_id`` the catalog lacks is appended: item_idx N+1, N+2, ... in file order, popularity
  count 0 (it has no training interactions, so it never enters the fallback list ahead of a
  trained item);
- an ``item_id`` the catalog has is an *update*: its title and text vector are replaced, its
  learned id parts kept (the same item, described anew); one whose title and text vector are
  both unchanged is left as it is;
- item_idx of existing items never change, so histories, logs and an older version's answers
  keep meaning the same items.

The new bundle is written under a temporary name and renamed into place (``save_bundle``), then
loaded back and asked for a recommendation from a history of new items before anyone may
register it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from lite_rec.core.errors import DataError
from lite_rec.infer.bundle import Bundle, load_bundle, save_bundle
from lite_rec.infer.recommender import Recommender
from lite_rec.model.rec_llm import ITEM_ROWS
from lite_rec.model.spec import ModelSpec

__all__ = ["CatalogChange", "CatalogError", "check_extendable", "extend_bundle"]

CHECK_TIME = 978_300_000  # events of the served check: any past time does


class CatalogError(DataError):
    """The model cannot take these items, or the items do not fit the model."""


@dataclass(frozen=True)
class CatalogChange:
    """What a catalog update did, by raw item_id, in file order."""

    added: list[str]  # new to the catalog (item_idx N+1, ...)
    updated: list[str]  # known, with a new title or text
    unchanged: list[str]  # known, title and text as before
    num_items: int  # the new catalog's size

    def summary(self) -> str:
        return (f"{len(self.added)} added, {len(self.updated)} updated, {len(self.unchanged)} unchanged; "
                f"{self.num_items} items in the catalog")


def check_extendable(spec: ModelSpec, where: str) -> None:
    """Raise :class:`CatalogError` unless the model can score items it was not trained on."""
    cfg = spec.config
    if cfg.head != "inductive":
        raise CatalogError(f"{where}: this model has the linear item head (model.head={cfg.head}), one learned row per "
                           "training item, so it cannot score an item it was not trained on. Train a model with "
                           "model.head=inductive (item vectors computed from the item text), or retrain on the new catalog")
    if "text" not in cfg.item_repr:  # ModelConfig refuses it too; a hand-edited bundle could still say so
        raise CatalogError(f"{where}: model.item_repr={cfg.item_repr!r} reads no item text; new items need it")


def extend_bundle(bundle: Bundle, items: pd.DataFrame, vectors: torch.Tensor, out_dir: Path | str, *,
                  extra: dict[str, Any] | None = None) -> tuple[Path, CatalogChange]:
    """`bundle` with `items` (``item_id``, ``title``; unique ids) whose item-LLM vectors are
    `vectors` (M, D_item), row m for items row m, written to `out_dir`; `extra` is merged into the
    bundle's provenance facts. Returns the new bundle's path and what changed."""
    spec = bundle.spec
    check_extendable(spec, str(bundle.path))
    tensors = dict(bundle.tensors)
    table = tensors["item_vectors"]  # (N+1, D_item)
    m = len(items)
    if tuple(vectors.shape) != (m, table.shape[1]):
        raise CatalogError(f"{bundle.path}: the model reads {table.shape[1]}-dim item vectors, the item encoder gave "
                           f"{tuple(vectors.shape)} for {m} items; encode them with the encoder the model was trained with "
                           f"({bundle.extra.get('item_encoder', 'see the bundle')})")
    if not bool(torch.isfinite(vectors).all()):
        raise CatalogError(f"{bundle.path}: the item encoder gave non-finite vectors; nothing was changed")
    ids = items["item_id"].astype(str).tolist()
    titles = items["title"].astype(str).tolist()
    if len(set(ids)) != m:
        raise CatalogError("the new items repeat an item_id; give each item one row")
    rows = pd.Index(bundle.items["item_id"]).get_indexer(ids)  # (M,) row of the catalog, -1 = new
    catalog = bundle.items.copy()
    table = table.clone()
    added, updated, unchanged, fresh = [], [], [], []
    for k, (item_id, title, row) in enumerate(zip(ids, titles, rows, strict=True)):
        if row < 0:
            added.append(item_id)
            fresh.append(k)
        elif torch.equal(table[row + 1], vectors[k]) and catalog.at[row, "title"] == title:
            unchanged.append(item_id)
        else:
            table[row + 1] = vectors[k]
            catalog.at[row, "title"] = title
            updated.append(item_id)
    if not added and not updated:
        raise CatalogError(f"{bundle.path}: every item of the file is already in the catalog with the same title and text; "
                           "no new version is needed")
    n, new = spec.n_items, len(fresh)
    tensors["item_vectors"] = torch.cat([table, vectors[fresh].to(table.dtype)])  # (N+1+new, D_item)
    for key in ITEM_ROWS[1:]:
        if key in tensors:  # learned id parts: new items have none
            tensors[key] = torch.cat([tensors[key], tensors[key].new_zeros(new, tensors[key].shape[1])])  # (N+1+new, D)
    new_items = pd.DataFrame({"item_idx": range(n + 1, n + new + 1), "item_id": [ids[k] for k in fresh],
                              "title": [titles[k] for k in fresh]})
    popularity = pd.concat([bundle.popularity, pd.DataFrame({"item_idx": new_items["item_idx"], "count": 0})])
    new_spec = dataclasses.replace(spec, n_items=n + new)
    path = save_bundle(out_dir, spec=new_spec, state_dict=tensors, items=pd.concat([catalog, new_items], ignore_index=True),
                       popularity=popularity, dataset=bundle.dataset, protocol=bundle.protocol,
                       extra={**bundle.extra, **(extra or {})}, overwrite=True)
    _check_serves(path, added or updated)
    return path, CatalogChange(added, updated, unchanged, n + new)


def _check_serves(path: Path, item_ids: list[str]) -> None:
    """Load the written bundle back and score a history of the changed items: every score finite."""
    rec = Recommender(load_bundle(path))
    with torch.no_grad():
        weight = rec.model.head_weight()  # (N+1, D)
    if not bool(torch.isfinite(weight[1:]).all()):
        raise CatalogError(f"{path}: some item vectors are not finite; the bundle is not registered")
    history: list = item_ids[-rec.max_seq_len:]
    times = None
    if rec.context_fields:  # a model that reads times and ratings gets events, an hour apart, and a request time
        history = [{"item_id": i, "ts": CHECK_TIME + 3600 * j, "rating": 4} for j, i in enumerate(history)]
        times = [CHECK_TIME + 3600 * (len(history) + 1)]
    answer = rec.recommend([history], k=min(10, rec.num_items), exclude_history=False, request_times=times)[0]
    if len(answer) == 0 or answer.fallback or not all(math.isfinite(s) for s in answer.scores):
        raise CatalogError(f"{path}: the new catalog does not score a history of its new items; the bundle is not registered")
