"""Catalog updates without retraining: a file of items -> a new registered version of the model.

Why a registry step and not a file the service reads: the service follows an alias, and every
safeguard a trained model passes (a verified bundle, a version that loads and predicts through
the registry, promotion on held-out data, rollback) should hold for a catalog change too. So
:func:`add_items` ends where training ends, in a verified registry version:

1. resolve the model (default ``models:/<registered model>@champion``) and download its bundle;
   refuse a model that cannot score an item it was not trained on (the linear head);
2. read and check the item file (:mod:`lite_rec.items.catalog_file`: schema, duplicates, empty
   or oversize texts, each error naming the row and the field);
3. text vectors through the item-vector cache: only texts it has not seen are encoded;
4. the new bundle (:func:`lite_rec.infer.catalog.extend_bundle`), written under a temporary
   name, renamed, loaded back and asked for a recommendation;
5. an MLflow run (the item file and what changed) and a verified version, tagged with its
   lineage: ``catalog.extends_version``, the file's sha256, the added and updated items;
6. promotion (:func:`lite_rec.registry.promotion.promote_catalog`): the version replaces the
   champion when it extends the champion and scores no more than
   ``tracking.catalog_max_drop`` below it on the same held-out data.

Any failure in 1-4 leaves the registry untouched; a failure in 5 deletes the run and the version
(``register_verified``); the served model changes only in 6.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

import mlflow
from lite_rec.core.config import LiteRecConfig
from lite_rec.core.errors import ConfigError, LiteRecError
from lite_rec.core.io import sha256_file
from lite_rec.infer.bundle import Bundle, load_bundle
from lite_rec.infer.catalog import CatalogChange, CatalogError, check_extendable, extend_bundle
from lite_rec.items.cache import vectors_for_texts
from lite_rec.items.catalog_file import read_item_file
from lite_rec.registry.client import make_client, mlflow_uris
from lite_rec.registry.promotion import PromotionDecision, promote_catalog
from lite_rec.registry.publish import RegisteredVersion, log_pyfunc, register_verified
from lite_rec.registry.refs import parse_model_ref
from lite_rec.registry.tracking import ensure_experiment, git_commit
from lite_rec.registry.versions import (
    CHAMPION,
    RegistryError,
    download_bundle,
    registered_model_name,
    resolve_version,
)

__all__ = ["CatalogUpdate", "add_items"]

log = logging.getLogger(__name__)
# version tags copied from the version a catalog update extends: the model and its data are the same
INHERITED_TAGS = ("dataset", "protocol", "data_fingerprint", "backbone_weights", "context_fields")


@dataclass(frozen=True)
class CatalogUpdate:
    """What ``lite-rec add-items`` did."""

    registered: RegisteredVersion
    extends: str  # the version it was built from
    change: CatalogChange
    encoded: int  # texts the item LLM encoded (the rest came from the cache)
    decision: PromotionDecision

    def summary(self) -> str:
        served = "it serves now (champion)" if self.decision.promoted else f"champion stays v{self.decision.champion_after}"
        return (f"{self.registered.model_uri} extends v{self.extends}: {self.change.summary()}; {self.encoded} texts encoded. "
                f"Promotion: {self.decision.reason}; {served}")


def _parent(cfg: LiteRecConfig, model: str | None, client: MlflowClient) -> tuple[str, str]:
    """(registered model name, version) the update extends."""
    ref = parse_model_ref(model or f"models:/{registered_model_name(cfg)}@{CHAMPION}")
    if ref.path is not None:
        raise ConfigError(f"--model {ref.text!r}: a catalog update makes a new version of a registered model; "
                          "pass models:/<name>@<alias> or models:/<name>/<version>")
    try:
        return str(ref.name), resolve_version(ref, client)
    except LookupError as exc:
        raise RegistryError(str(exc)) from None


def add_items(cfg: LiteRecConfig, items_file: Path | str, model: str | None = None, *, progress: bool = True,
              client: MlflowClient | None = None) -> CatalogUpdate:
    """Add the items of `items_file` to `model` (default: the champion) without retraining; see the module docstring."""
    client = client or make_client(cfg)
    items_file = Path(items_file)
    name, parent = _parent(cfg, model, client)
    where = f"models:/{name}/{parent}"
    with tempfile.TemporaryDirectory(prefix="lite-rec-catalog-") as tmp:
        bundle = load_bundle(download_bundle(client, name, parent, Path(tmp)))
    check_extendable(bundle.spec, where)  # before any file is read or text encoded
    encoder = bundle.extra.get("item_encoder")
    if encoder not in (None, "unknown", cfg.item_encoder.model):
        raise CatalogError(f"{where} was trained on vectors of item_encoder.model={encoder!r}; this config encodes with "
                           f"{cfg.item_encoder.model!r}. Pass --set item_encoder.model={encoder}")
    new = read_item_file(items_file, cfg.dataset)
    vectors, encoded = vectors_for_texts(cfg, new.texts, progress=progress)
    file_sha = sha256_file(items_file)
    lineage = {"extends": where, "items_file": items_file.name, "items_file_sha256": file_sha}
    out_dir = cfg.runs_dir / "catalog" / f"{name}-v{parent}-{file_sha[:10]}"
    bundle_dir, change = extend_bundle(bundle, new.items, vectors, out_dir, extra={"catalog": lineage})
    registered = _register(cfg, client, name, parent, load_bundle(bundle_dir), bundle_dir, items_file, change, file_sha)
    decision = promote_catalog(cfg, registered.version, parent, client=client)
    return CatalogUpdate(registered, parent, change, encoded, decision)


def _register(cfg: LiteRecConfig, client: MlflowClient, name: str, parent: str, bundle: Bundle, bundle_dir: Path,
              items_file: Path, change: CatalogChange, file_sha: str) -> RegisteredVersion:
    """One MLflow run (lineage tags, the item file, the change) and a verified version; nothing kept on failure."""
    inherited = client.get_model_version(name, parent).tags
    tags = {k: inherited[k] for k in INHERITED_TAGS if k in inherited}
    tags.update({
        "bundle_sha256": bundle.fingerprint,
        "catalog.extends_version": parent,
        "catalog.items_file": items_file.name,
        "catalog.items_file_sha256": file_sha,
        "catalog.added": str(len(change.added)),
        "catalog.updated": str(len(change.updated)),
        "catalog.num_items": str(change.num_items),
        "git_commit": git_commit(),
    })
    run_id: str | None = None
    try:
        experiment_id = ensure_experiment(client, cfg)
        with mlflow_uris(client), mlflow.start_run(experiment_id=experiment_id, run_name=f"add-items-v{parent}") as run:
            run_id = run.info.run_id
            client.log_batch(run_id, tags=[mlflow.entities.RunTag(k, v) for k, v in tags.items()])
            client.log_artifact(run_id, str(items_file), artifact_path="catalog")
            with tempfile.TemporaryDirectory(prefix="lite-rec-catalog-run-") as tmp:
                record = Path(tmp) / "change.json"
                record.write_text(json.dumps({"added": change.added, "updated": change.updated,
                                              "unchanged": change.unchanged}, indent=1), encoding="utf-8")
                client.log_artifact(run_id, str(record), artifact_path="catalog")
            info = log_pyfunc(cfg, bundle, bundle_dir)
            registered = register_verified(client, name, info.model_uri, getattr(info, "model_id", None), run_id, bundle, tags)
            client.set_tag(run_id, "registered_model_version", f"{name}/{registered.version}")
    except BaseException as exc:
        if run_id is not None:
            try:
                client.delete_run(run_id)
            except Exception:  # noqa: BLE001 - the store may be what failed; the original error matters more
                pass
        if isinstance(exc, LiteRecError | KeyboardInterrupt):
            raise
        raise RegistryError(f"registering the new catalog of {name} v{parent} failed: {type(exc).__name__}: "
                            f"{str(exc)[:500]}; no run or version was kept, champion is unchanged") from exc
    log.info("registered %s (extends v%s)", registered.model_uri, parent)
    return registered
