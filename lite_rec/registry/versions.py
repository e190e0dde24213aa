"""Registered versions: which one a reference points at, the aliases and their history, and
downloading a version's verified bundle.

Why apart from publishing: the service, batch scoring and promotion read the registry but never
log to it; they need only these lookups (``serve`` imports this module, not ``publish``).
Champion moves are recorded in the registered-model tag ``champion_history`` (a JSON list of
versions, oldest first) so ``lite-rec rollback`` can move the alias back (``promotion.py``).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

import mlflow
from lite_rec.core.config import LiteRecConfig
from lite_rec.core.errors import LiteRecError
from lite_rec.infer.bundle import Bundle, load_bundle, verify_bundle
from lite_rec.registry.client import client_for, mlflow_uris
from lite_rec.registry.refs import ModelRef

CHALLENGER, CHAMPION = "challenger", "champion"
HISTORY_TAG = "champion_history"
HISTORY_KEEP = 100  # versions kept in the history tag (tag values are length-limited)


class RegistryError(LiteRecError):
    """The registry refused or lost something: missing alias, incomplete version, no rollback target."""


class RegistryUnavailable(RegistryError):
    """The tracking server could not be reached (or answered 5xx): a retry may succeed."""


def registered_model_name(cfg: LiteRecConfig) -> str:
    """``tracking.registered_model`` or ``lite-rec-<dataset without dashes>`` (``lite-rec-ml100k``)."""
    return cfg.tracking.registered_model or f"lite-rec-{cfg.dataset.name.replace('-', '')}"


def resolve_version(ref: ModelRef, client: MlflowClient | None = None) -> str:
    """The version `ref` points at now: ``local``, the pinned one, or the alias's (a registry call)."""
    if ref.fixed_version is not None:
        return ref.fixed_version
    mv = alias_version(client or client_for(), str(ref.name), str(ref.alias))
    if mv is None:
        raise LookupError(f"{ref.text}: the registry has no alias {ref.alias!r} on model {ref.name!r}")
    return str(mv.version)


def fetch_bundle(ref: ModelRef, version: str, client: MlflowClient | None = None, cache_dir: Path | None = None) -> tuple[Bundle, str]:
    """Download (registry) or open (local) and verify the bundle; returns it and its source URI.

    Registry bundles are read fully into memory, so the download directory is removed at once.
    """
    if ref.path is not None:
        return load_bundle(ref.path), str(ref.path)
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lite-rec-serve-", dir=cache_dir) as tmp:
        bundle = load_bundle(download_bundle(client or client_for(), str(ref.name), version, Path(tmp)))
    return bundle, f"models:/{ref.name}/{version}"


# ---------------------------------------------------------------------------------------------
# Aliases and the champion history


def alias_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version an alias points at, or None when the alias (or the model) does not exist."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def champion_history(client: MlflowClient, name: str) -> list[str]:
    """Versions that held ``champion``, oldest first (the last one holds it now)."""
    raw = client.get_registered_model(name).tags.get(HISTORY_TAG)
    return [str(v) for v in json.loads(raw)] if raw else []


def set_champion(client: MlflowClient, name: str, version: str, *, history: list[str] | None = None) -> None:
    """Point ``champion`` at `version` and record the move (or store `history` as given, for rollback)."""
    client.set_registered_model_alias(name, CHAMPION, str(version))
    if history is None:
        history = champion_history(client, name)
        if not history or history[-1] != str(version):
            history.append(str(version))
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[-HISTORY_KEEP:]))


# ---------------------------------------------------------------------------------------------
# Downloading and verifying a version


def _bundle_dir(model_dir: Path) -> Path:
    """Where the ``bundle`` artifact lies inside a downloaded pyfunc model."""
    mlmodel = mlflow.models.Model.load(str(model_dir))
    try:
        rel = mlmodel.flavors["python_function"]["artifacts"]["bundle"]["path"]
    except KeyError:
        raise RegistryError(f"{model_dir}: not a lite-rec pyfunc (no 'bundle' artifact in MLmodel)") from None
    return model_dir / rel


def download_model(client: MlflowClient, name: str, version: str, dst: Path) -> tuple[Path, Path]:
    """Download ``models:/<name>/<version>`` into `dst`; returns (model dir, verified bundle dir)."""
    mv = client.get_model_version(name, str(version))
    if mv.status != "READY":
        raise RegistryError(f"{name} version {version} is {mv.status}, not READY")
    with mlflow_uris(client):  # "models:/" resolves through the process-wide registry URI, whatever is passed
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(dst)))
    bundle_dir = _bundle_dir(local)
    verify_bundle(bundle_dir)
    return local, bundle_dir


def download_bundle(client: MlflowClient, name: str, version: str, dst: Path) -> Path:
    """The verified bundle of a registered version, downloaded under `dst` (promotion, serving)."""
    return download_model(client, name, version, dst)[1]
