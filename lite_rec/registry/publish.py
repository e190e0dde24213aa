"""Logging a trained model to MLflow as a pyfunc, registering it, and moving its aliases safely.

Why the strict order: serving follows the ``champion`` alias, so an alias may
only ever point at a version whose artifacts are complete. :func:`log_training_run` therefore

1. logs the run (``lite_rec.registry.tracking``) and the pyfunc ("models from code": the source of
   ``pyfunc_model.py``, the code-free bundle as the ``bundle`` artifact, a copy of ``lite_rec``
   as ``code_paths`` so the version loads where the package is not installed);
2. creates the model version and *verifies it through the registry*: downloads
   ``models:/<name>/<version>``, checks every bundle file against its manifest and against the
   bundle that was logged, loads the pyfunc and predicts the input example;
3. only then sets ``challenger`` (and ``champion`` when the model has none yet).

If any step after the version exists fails, the version is deleted (its aliases go with it)
and the error is re-raised: no half-registered version is left behind.

What a request must carry is recorded with every version: the request fields the model reads
besides item ids (``context_fields``: ``ts``, ``rating``, ``request_time``; [] for an ids-only
model) are a version tag, a line of its description (the model's MLflow page) and the pyfunc's
metadata, and the input example is a valid request of that form (events and a request time for
a model that reads them).

Aliases, their history and downloads live in ``registry.versions``.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient

import mlflow
from lite_rec.core.config import LiteRecConfig, resource_dir
from lite_rec.core.errors import LiteRecError
from lite_rec.infer.bundle import Bundle, load_bundle
from lite_rec.model.context import RATING, REQUEST_TIME
from lite_rec.registry.client import make_client, mlflow_uris
from lite_rec.registry.tracking import ensure_experiment, log_run_contents
from lite_rec.registry.versions import (
    CHALLENGER,
    CHAMPION,
    RegistryError,
    RegistryUnavailable,
    alias_version,
    download_model,
    registered_model_name,
    set_champion,
)

if TYPE_CHECKING:
    from lite_rec.train.run import TrainResult

__all__ = [
    "RegisteredVersion",
    "log_pyfunc",
    "log_training_run",
    "model_signature",
    "register_verified",
    "remove_unverified_versions",
]

PYFUNC_FILE = resource_dir("mlflow") / "pyfunc_model.py"  # the models-from-code file
SIGNATURE_FILE = resource_dir("mlflow") / "signature.json"
MODEL_NAME = "model"  # the logged model's name inside the run
REQUIREMENTS = ("mlflow", "torch", "transformers", "safetensors", "pandas", "pyarrow", "numpy", "pydantic", "pyyaml", "tqdm")


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    run_id: str
    model_uri: str  # models:/<name>/<version>
    aliases: tuple[str, ...]


def model_signature(path: Path = SIGNATURE_FILE) -> ModelSignature:
    """The request/response columns, kept in ``mlflow/signature.json`` for serving docs to share."""
    spec = json.loads(path.read_text(encoding="utf-8"))
    return ModelSignature.from_dict({"inputs": json.dumps(spec["inputs"]), "outputs": json.dumps(spec["outputs"])})


# times of the example events and request (two films rated on the last evening of 2000, the request the
# next morning): any past times in order would do
EXAMPLE_TIMES = (978_300_760, 978_301_968)
EXAMPLE_REQUEST_TIME = "2001-01-01T09:00:00Z"


def input_example(bundle: Bundle) -> pd.DataFrame:
    """A valid request for this very model: two popular items as a history (events with the
    fields the model reads: ``ts``, ``rating``, and the ``request_time``), and an empty one."""
    ids = bundle.items.set_index("item_idx").loc[bundle.popularity["item_idx"].head(2), "item_id"].tolist()
    k = min(5, bundle.num_items)
    fields = bundle.context_fields
    if not fields:
        return pd.DataFrame({"history": [ids, []], "k": [k, k]})
    history = [{"item_id": i, "ts": t, **({"rating": 4} if RATING in fields else {})} for i, t in zip(ids, EXAMPLE_TIMES)]
    example = pd.DataFrame({"history": [history, []], "k": [k, k]})
    if REQUEST_TIME in fields:
        example["request_time"] = [EXAMPLE_REQUEST_TIME] * 2
    return example


def version_description(bundle: Bundle) -> str:
    """The model version's description (its MLflow page): what a request must carry."""
    fields = bundle.context_fields
    if not fields:
        return ("Reads the history's item ids only (context_fields: []); events {item_id, ts, rating} are accepted, "
                "their ts and rating ignored.")
    return (f"Reads the history's item ids and {', '.join(fields)} (context_fields: {json.dumps(fields)}): send each "
            "history item as an event {item_id, ts" + (", rating" if RATING in fields else "") + "}, oldest first"
            + (", and request_time (default: the server's clock)" if REQUEST_TIME in fields else "")
            + "; a request without them is refused (422 missing_context, naming the field and the version).")


def _pip_requirements() -> list[str]:
    """Pinned from the running environment (MLflow would otherwise load the model to infer them)."""
    out = []
    for name in REQUIREMENTS:
        try:
            out.append(f"{name}=={importlib.metadata.version(name).split('+')[0]}")  # 2.13.0+cpu -> 2.13.0
        except importlib.metadata.PackageNotFoundError:
            out.append(name)
    return out


def _stage(root: Path, bundle_dir: Path) -> tuple[Path, Path]:
    """A clean copy of the lite_rec package (no caches) for ``code_paths``, and the bundle under
    the fixed name ``bundle`` (so every version stores it at ``artifacts/bundle``)."""
    code = root / "lite_rec"
    shutil.copytree(Path(__file__).resolve().parents[1], code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    bundle = root / "bundle"
    shutil.copytree(bundle_dir, bundle)
    return code, bundle


def verify_version(client: MlflowClient, name: str, version: str, bundle: Bundle, example: pd.DataFrame) -> None:
    """Refuse a version whose stored files differ from `bundle` or that cannot load and predict."""
    with tempfile.TemporaryDirectory(prefix="lite-rec-verify-") as tmp:
        model_dir, stored = download_model(client, name, version, Path(tmp))
        if load_bundle(stored).fingerprint != bundle.fingerprint:
            raise RegistryError(f"{name} version {version}: stored bundle differs from the logged one")
        model = mlflow.pyfunc.load_model(str(model_dir))
        out = model.predict(example)
        k = int(example["k"].iloc[0])
        if list(out.columns[:3]) != ["item_ids", "scores", "titles"] or len(out) != len(example) or len(out["item_ids"].iloc[0]) != k:
            raise RegistryError(f"{name} version {version}: the pyfunc answered {out.shape} {list(out.columns)}, not a top-{k}")


def _cleanup(client: MlflowClient, name: str, version: str | None, created_model: bool) -> None:
    """Remove a half-registered version (and the registered model when this call created it)."""
    if version is not None:
        client.delete_model_version(name, version)
    if created_model and not client.search_model_versions(f"name = '{name}'"):
        client.delete_registered_model(name)


def remove_unverified_versions(client: MlflowClient, name: str, min_age_s: float = 600.0) -> list[str]:
    """Delete versions a killed process left half-registered (no ``verified`` tag, no alias).

    try/except cleans up after exceptions; this sweep covers a process killed between creating
    a version and verifying it. `min_age_s` spares a registration still running elsewhere.
    """
    cutoff_ms = (time.time() - min_age_s) * 1000
    removed = []
    for mv in client.search_model_versions(f"name = '{name}'"):
        if mv.tags.get("verified") != "true" and not mv.aliases and mv.creation_timestamp < cutoff_ms:
            client.delete_model_version(name, mv.version)
            removed.append(str(mv.version))
    return removed


def register_verified(
    client: MlflowClient, name: str, model_uri: str, model_id: str | None, run_id: str, bundle: Bundle, tags: dict[str, str]
) -> RegisteredVersion:
    """Create, verify, then alias a version; delete it again if anything on the way fails."""
    try:
        client.get_registered_model(name)
        created = False
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(name, description="Lite-LLM4Rec next-item recommender (lite-rec)")
        created = True
    if not created:
        remove_unverified_versions(client, name)
    version: str | None = None
    try:
        mv = client.create_model_version(name, source=model_uri, run_id=run_id, tags=tags, model_id=model_id,
                                         description=version_description(bundle), await_creation_for=300)
        version = str(mv.version)
        verify_version(client, name, version, bundle, input_example(bundle))
        client.set_model_version_tag(name, version, "verified", "true")
        client.set_registered_model_alias(name, CHALLENGER, version)
        aliases = [CHALLENGER]
        if alias_version(client, name, CHAMPION) is None:
            set_champion(client, name, version)  # first version (or champion deleted): it serves
            aliases.append(CHAMPION)
    except BaseException:
        _cleanup(client, name, version, created)
        raise
    return RegisteredVersion(name, version, run_id, f"models:/{name}/{version}", tuple(aliases))


# ---------------------------------------------------------------------------------------------
# The whole thing


def log_training_run(
    cfg: LiteRecConfig,
    result: "TrainResult",
    bundle_dir: Path | str,
    *,
    item_vectors_manifest: Path | None = None,
    commit: str | None = None,
    run_name: str | None = None,
) -> RegisteredVersion:
    """Log one training run and its model, register a verified version, set its aliases.

    `result` is :func:`lite_rec.train.run.train_model`'s return value, `bundle_dir` the bundle built
    from it (:func:`lite_rec.train.export.build_bundle`). On failure the MLflow run is deleted, no
    registry version is left behind, and the error is a :class:`RegistryError` that says so
    (:class:`RegistryUnavailable` when the tracking server could not be reached: worth a retry).
    """
    bundle = load_bundle(bundle_dir)
    client = make_client(cfg)
    name = registered_model_name(cfg)
    run_id: str | None = None
    try:
        experiment_id = ensure_experiment(client, cfg)
        with mlflow_uris(client), mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
            run_id = run.info.run_id
            registered = _log_and_register(client, cfg, result, bundle, Path(bundle_dir), name, run_id,
                                           commit=commit, item_vectors_manifest=item_vectors_manifest)
    except BaseException as exc:
        if run_id is not None:
            _delete_run(client, run_id)
        if isinstance(exc, LiteRecError | KeyboardInterrupt):
            raise
        kind = RegistryUnavailable if _is_transient(exc) else RegistryError
        raise kind(f"registering {name} at {client.tracking_uri} failed: {type(exc).__name__}: {_short(exc)}. No run "
                   f"or version was kept; the trained model stays in {result.out_dir}, and the same command registers "
                   "it without training again") from exc
    return registered


def _log_and_register(client: MlflowClient, cfg: LiteRecConfig, result: "TrainResult", bundle: Bundle, bundle_dir: Path,
                      name: str, run_id: str, *, commit: str | None, item_vectors_manifest: Path | None) -> RegisteredVersion:
    """Inside the open run: its contents, the pyfunc, then the verified version (``register_verified``)."""
    tags = log_run_contents(client, run_id, cfg, result, bundle, commit=commit, item_vectors_manifest=item_vectors_manifest)
    info = log_pyfunc(cfg, bundle, bundle_dir)
    metric = cfg.tracking.promote_metric
    version_tags: dict[str, Any] = {
        key: tags[key]
        for key in ("dataset", "protocol", "data_fingerprint", "git_commit", "backbone_weights", "bundle_sha256", "context_fields")
    }
    if metric in result.metrics:
        version_tags[metric] = f"{result.metrics[metric]:.6f}"
    registered = register_verified(client, name, info.model_uri, getattr(info, "model_id", None), run_id, bundle, version_tags)
    client.set_tag(run_id, "registered_model_version", f"{name}/{registered.version}")
    return registered


def log_pyfunc(cfg: LiteRecConfig, bundle: Bundle, bundle_dir: Path) -> Any:
    """Log the pyfunc of `bundle` into the active run (models from code: ``pyfunc_model.py``, the
    bundle as the ``bundle`` artifact, a copy of ``lite_rec`` as ``code_paths``); MLflow's model info."""
    with tempfile.TemporaryDirectory(prefix="lite-rec-stage-") as tmp:
        code, staged = _stage(Path(tmp), bundle_dir)
        return mlflow.pyfunc.log_model(
            name=MODEL_NAME,
            python_model=str(PYFUNC_FILE),
            artifacts={"bundle": str(staged)},
            code_paths=[str(code)],
            signature=model_signature(),
            input_example=input_example(bundle),
            pip_requirements=_pip_requirements(),
            metadata={"dataset": cfg.dataset.name, "bundle_sha256": bundle.fingerprint, "context_fields": bundle.context_fields},
        )


def _delete_run(client: MlflowClient, run_id: str) -> None:
    """Remove a run whose registration failed (a FAILED run with half its artifacts helps nobody)."""
    try:
        client.delete_run(run_id)
    except Exception:  # noqa: BLE001 - the store may be the thing that failed; the original error matters more
        pass


def _is_transient(exc: BaseException) -> bool:
    """Whether retrying may help: the tracking server was unreachable or answered 5xx."""
    if isinstance(exc, ConnectionError | TimeoutError):  # not every OSError: a missing local file stays missing
        return True
    if isinstance(exc, MlflowException):
        return exc.error_code in ("TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR", "REQUEST_LIMIT_EXCEEDED")
    return "ConnectionError" in type(exc).__name__


def _short(exc: BaseException, limit: int = 500) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + " ..."
