"""Which MLflow tracking store and registry a process talks to, and a client for it.

Why one module: training, registration, promotion, the service and batch scoring all reach the
registry, and each must pick the same store for the same config; and MLflow's fluent API reads
process-wide URIs, which a long-lived process must only borrow (``mlflow_uris``).

``tracking.tracking_uri`` wins, then ``MLFLOW_TRACKING_URI`` (``lite_rec.core.env`` sets it), then
the embedded default, a sqlite file under ``<data_dir>/mlflow`` with artifacts beside it.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from mlflow.tracking import MlflowClient

import mlflow
from lite_rec.core.config import LiteRecConfig

__all__ = ["bounded_http", "client_for", "make_client", "mlflow_uris", "resolve_tracking_uri"]


def resolve_tracking_uri(cfg: LiteRecConfig) -> str:
    if cfg.tracking.tracking_uri:
        return cfg.tracking.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    store = (cfg.data_dir / "mlflow").resolve()
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}"


def make_client(cfg: LiteRecConfig) -> MlflowClient:
    """A client for the configured tracking store and registry (process-wide URIs stay untouched)."""
    uri = resolve_tracking_uri(cfg)
    return MlflowClient(tracking_uri=uri, registry_uri=cfg.tracking.registry_uri or uri)


def client_for(tracking_uri: str | None = None) -> MlflowClient:
    """An MlflowClient for `tracking_uri` (its registry too), else for MLflow's configured URIs.

    Process-wide URIs are left alone: a download points them at the client's stores only for its
    own duration (``lite_rec.registry.tracking.mlflow_uris``).
    """
    if tracking_uri:
        return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    return MlflowClient()


@contextmanager
def mlflow_uris(client: MlflowClient) -> Iterator[MlflowClient]:
    """Point MLflow's fluent API (``start_run``, ``log_model``, ``download_artifacts("models:/...")``)
    at `client`'s stores for the duration of the block, then restore what was there.

    Why scoped: the fluent API reads process-wide URIs, and a long-lived process (a Prefect
    worker, a service following a registry, a whole test run) that set them once for one store
    would silently talk to it later, long after it stopped.
    """
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    # set_*_uri also exports MLFLOW_*_URI to os.environ: both the module state and the
    # environment are put back exactly, including "unset".
    saved_env = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    saved = (tracking_utils._tracking_uri, registry_utils._registry_uri)
    mlflow.set_tracking_uri(client.tracking_uri)
    mlflow.set_registry_uri(client._registry_uri)  # MlflowClient keeps its registry URI only in this attribute (3.17)
    try:
        yield client
    finally:
        mlflow.set_tracking_uri(saved[0])  # also resets the tracer provider bound to the old URI
        registry_utils._registry_uri = saved[1]
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# MLflow reads these per request (mlflow.utils.rest_utils.http_request); the timeout is whole seconds.
_HTTP_BOUNDS = ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES")
_http_bounds_lock = threading.Lock()


@contextmanager
def bounded_http(timeout_s: float) -> Iterator[None]:
    """MLflow HTTP calls made in the block give up after about `timeout_s` (at least 1 s, MLflow
    counts whole seconds) and are not retried.

    Why: by default a call to an unreachable tracking server is retried with exponential backoff
    for minutes (MLflow's defaults ride out rate limiting), so a caller that must notice an outage
    within its own interval (the service's alias poll) would hear nothing for that long. The
    caller tries again at its next interval instead. The bounds are MLflow's own environment
    settings, read per request: they are set for the block's duration only (one block at a time
    in the process; a block that cannot start within `timeout_s` raises ``TimeoutError``) and put
    back after (unless changed meanwhile), so calls outside the block, artifact downloads
    included, keep their retries. Other threads calling MLflow during the block get the same bounds.
    """
    if not _http_bounds_lock.acquire(timeout=max(timeout_s, 0.0)):
        raise TimeoutError(f"another bounded registry call is still running after {timeout_s:.1f} s")
    saved = {key: os.environ.get(key) for key in _HTTP_BOUNDS}
    bounds = {"MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, math.ceil(timeout_s))), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    try:
        os.environ.update(bounds)
        yield
    finally:
        for key, value in saved.items():
            if os.environ.get(key) != bounds[key]:
                continue  # changed by someone else meanwhile: theirs stays
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _http_bounds_lock.release()
