"""Which model the service serves, and how a new one replaces it without a failed request.

Why a watcher and not "load at start": serving follows the registry. ``champion`` is moved by
promotion or rollback (``lite_rec.registry.promotion``) while the service runs, and the service
must pick that up by itself. The rules:

- ``--model`` is ``models:/<name>@<alias>`` (followed: a background thread polls the alias every
  ``serve.poll_interval_s``), ``models:/<name>/<version>`` (pinned) or a local bundle directory.
- A new version is downloaded, verified against its manifest (``registry.download_bundle``),
  built on the fast path and warmed up *beside* the served one; only then is it swapped in, by
  one reference assignment under a lock. A request reads the reference once and finishes on the
  model it read, so requests in flight during a swap finish on the old model.
- A version that fails to load (incomplete or tampered bundle, weights that do not fit) is
  logged, counted (``lite_rec_model_loads_total{outcome="failure"}``) and shown by ``/ready``;
  the old model keeps serving and that version is not retried until the alias moves again.
  Errors that may pass (the tracking server is down, a download broke) are retried next poll.
- A check of the alias ends within the poll interval (at most 30 s): the lookup runs with
  MLflow's own HTTP retries off and its timeout bounded (``registry.client.bounded_http``), in a
  worker thread with that deadline. By default MLflow retries an unreachable server for minutes,
  during which ``/ready`` would show neither the outage nor a fresh ``last_check``. A failed check
  is shown in ``/ready`` (``last_error`` with no version, fresh ``last_check``, the old
  ``last_success``) and counted (``lite_rec_registry_poll_failures_total``;
  ``lite_rec_registry_seconds_since_success`` grows); the next successful check clears it and an
  alias moved meanwhile is picked up then.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from lite_rec.core.errors import LiteRecError
from lite_rec.infer.bundle import Bundle, load_bundle
from lite_rec.infer.fast_path import FastModel, FastPathOptions, fast_recommender
from lite_rec.infer.recommender import Recommender
from lite_rec.registry.refs import ModelRef
from lite_rec.serve.metrics import ServiceMetrics

__all__ = [
    "ModelWatcher",
    "ServedModel",
    "make_loader",
    "warm_up",
]

log = logging.getLogger("lite_rec.serve")


Loader = Callable[[Bundle], Recommender]
T = TypeVar("T")
MAX_LOOKUP_S = 30.0  # the longest a registry lookup may take, whatever the poll interval


@dataclass(frozen=True)
class ServedModel:
    """One loaded, warmed-up model and where it came from (never mutated; swapped whole)."""

    recommender: Recommender
    version: str  # registry version, or "local"
    source: str  # models:/<name>/<version> or the bundle path
    fingerprint: str  # sha256 over the bundle manifest
    device: str
    loaded_at: float  # unix time
    load_seconds: float


def warm_up(rec: Recommender) -> Recommender:
    """Answer a few requests of every length bucket so the first user pays no lazy start-up
    (allocator growth, oneDNN primitive creation, cuBLAS handles)."""
    popular = rec.bundle.popularity["item_idx"].to_numpy(dtype=np.int64)[: rec.max_seq_len]
    ids = rec.item_ids[popular - 1].tolist()
    lengths = getattr(rec.model, "length_buckets", (rec.max_seq_len,))
    k = min(10, rec.num_items)
    for n in lengths:
        history, when = rec.example_request(ids[:n])  # events and a request time for a model that reads them
        rec.recommend([history], k, request_times=[when])
        rec.recommend([history] * 8, k, request_times=[when] * 8)
    rec.recommend([[]], k)  # the fallback path too
    return rec


def make_loader(device: str = "auto", options: FastPathOptions = FastPathOptions(), threads: int = 0) -> Loader:
    """Bundle -> fast-path Recommender, warmed up."""

    def load(bundle: Bundle) -> Recommender:
        return warm_up(fast_recommender(bundle, device, options, threads))

    return load


class ModelWatcher:
    """Holds the served model; loads, verifies, warms and swaps in new versions (module docstring)."""

    def __init__(
        self,
        ref: ModelRef,
        load: Loader,
        *,
        poll_interval_s: float = 30.0,
        tracking_uri: str | None = None,
        metrics: ServiceMetrics | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self.ref = ref
        self._load = load
        self.poll_interval_s = poll_interval_s
        self.tracking_uri = tracking_uri
        self.metrics = metrics or ServiceMetrics()
        self.cache_dir = cache_dir
        self._current: ServedModel | None = None
        self._lock = threading.Lock()  # guards the swap and the status fields
        self._failed: dict[str, str] = {}  # version -> error, not retried while the alias stays
        self.last_error: dict[str, Any] | None = None
        self.loading: str | None = None
        self.last_check: float | None = None  # when the last check started (successful or not)
        self.last_success: float | None = None  # when a check last resolved the target version
        self._created = time.time()
        self._client: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.metrics.follow_checks(self.seconds_since_success)

    @property
    def current(self) -> ServedModel | None:
        """The served model; read it once per request and use that object to the end."""
        return self._current

    # -----------------------------------------------------------------------------------------
    # Registry access (mlflow is imported only when a models:/ reference is served)

    def client(self) -> Any:
        if self._client is None:
            from lite_rec.registry.client import client_for

            self._client = client_for(self.tracking_uri)
        return self._client

    @property
    def lookup_timeout_s(self) -> float:
        """How long one alias lookup may take: the poll interval (at least 1 s, at most 30 s)."""
        return min(max(self.poll_interval_s, 1.0), MAX_LOOKUP_S) if self.poll_interval_s > 0 else MAX_LOOKUP_S

    def target_version(self) -> str:
        """The version the reference points at now (an alias is looked up in the registry, within
        :attr:`lookup_timeout_s`, else ``TimeoutError``)."""
        if self.ref.fixed_version is not None:  # local bundle or pinned version: no registry call
            return self.ref.fixed_version
        from lite_rec.registry.client import bounded_http
        from lite_rec.registry.versions import resolve_version

        timeout = self.lookup_timeout_s

        def lookup() -> str:
            with bounded_http(timeout / 2):  # MLflow gives up itself, well before the deadline
                return resolve_version(self.ref, self.client())

        return _within(timeout, lookup, f"the registry did not answer the lookup of {self.ref.text} within {timeout:.1f} s")

    def seconds_since_success(self) -> float:
        """Seconds since a check last resolved the followed alias (since start before the first);
        NaN when no alias is followed (a local bundle or pinned version is checked once)."""
        if not self.ref.follows_alias or self.poll_interval_s <= 0:
            return math.nan
        return max(0.0, time.time() - (self.last_success or self._created))

    def _fetch(self, version: str) -> tuple[Bundle, str]:
        if self.ref.path is not None:  # a bundle directory, as registry.versions.fetch_bundle opens one
            return load_bundle(self.ref.path), str(self.ref.path)
        from lite_rec.registry.versions import fetch_bundle

        return fetch_bundle(self.ref, version, self.client(), self.cache_dir)

    # -----------------------------------------------------------------------------------------
    # One poll

    def check(self) -> bool:
        """Poll once; load and swap in the target version when it changed. True when swapped.

        Raises only when the target cannot be resolved (registry unreachable, alias missing). A
        version that fails to load is recorded in :attr:`last_error` and returns False; it is
        retried next poll unless the failure is the version's own (a :class:`LiteRecError`).
        """
        self.last_check = time.time()
        try:
            version = self.target_version()
        except Exception:
            self.metrics.poll_failures.inc()
            raise
        with self._lock:
            self.last_success = time.time()
            if self.last_error is not None and self.last_error.get("version") is None:
                self.last_error = None  # the registry answers again; a version's own failure stays shown
        current = self._current
        if (current is not None and current.version == version) or version in self._failed:
            return False
        self.loading = version
        started = time.perf_counter()
        try:
            bundle, source = self._fetch(version)
            rec = self._load(bundle)
        except Exception as exc:  # noqa: BLE001 - whatever broke, the old model keeps serving
            self._record_failure(version, exc, permanent=isinstance(exc, LiteRecError))
            return False
        finally:
            self.loading = None
        seconds = time.perf_counter() - started
        served = ServedModel(rec, version, source, bundle.fingerprint, str(rec.device), time.time(), seconds)
        with self._lock:
            previous, self._current = self._current, served
            self.last_error = None
        self._record_success(served, previous)
        return True

    def _record_failure(self, version: str | None, exc: Exception, permanent: bool) -> None:
        message = f"{type(exc).__name__}: {exc}"
        with self._lock:
            if permanent and version is not None:
                self._failed[version] = message
            self.last_error = {"version": version, "error": message, "at": time.time(), "retried": not permanent}
        if version is not None:
            self.metrics.loads.labels(outcome="failure").inc()
        serving = self._current.version if self._current else None
        if version is None:
            log.error("checking %s failed (retried every %.1f s); serving %s: %s", self.ref.text, self.poll_interval_s, serving, message)
        else:
            log.error("model %s version %s failed to load (%s); serving %s: %s", self.ref.text, version,
                      "will retry" if not permanent else "not retried", serving, message)

    def _record_success(self, served: ServedModel, previous: ServedModel | None) -> None:
        m = self.metrics
        m.loads.labels(outcome="success").inc()
        if previous is not None:
            m.swaps.inc()
        m.model_version.set(int(served.version) if served.version.isdigit() else 0)
        m.model_info.replace(version=served.version, source=served.source, device=served.device)
        m.load_seconds.set(served.load_seconds)
        m.ready.set(1)
        log.info(
            "serving %s (version %s, %s) loaded in %.2f s%s", served.source, served.version, served.device,
            served.load_seconds, f", replacing version {previous.version}" if previous else "",
        )

    # -----------------------------------------------------------------------------------------
    # The background thread

    def start(self) -> None:
        """Load in the background, then keep following the alias (if any) until :meth:`stop`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="lite-rec-model-watcher", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.check()
            except Exception as exc:  # noqa: BLE001 - the watcher must outlive any registry hiccup
                self._record_failure(None, exc, permanent=False)
            loaded = self._current is not None
            if loaded and (not self.ref.follows_alias or self.poll_interval_s <= 0):
                return  # a pinned version or a local bundle never changes; following switched off
            retry = min(self.poll_interval_s, 2.0) if self.poll_interval_s > 0 else 2.0
            self._stop.wait(self.poll_interval_s if loaded else retry)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def status(self) -> dict[str, Any]:
        """What ``/ready`` shows: served version, loading version, last failure."""
        cur = self._current
        info: dict[str, Any] = {
            "ready": cur is not None,
            "model": self.ref.text,
            "follows_alias": self.ref.follows_alias,
            "poll_interval_s": self.poll_interval_s,
            "last_check": self.last_check,
            "last_success": self.last_success,
            "loading": self.loading,
            "last_error": self.last_error,
            "failed_versions": dict(self._failed),
        }
        if cur is not None:
            model = cur.recommender.model
            info.update(
                model_version=cur.version, source=cur.source, fingerprint=cur.fingerprint, device=cur.device,
                loaded_at=cur.loaded_at, load_seconds=round(cur.load_seconds, 3), num_items=cur.recommender.num_items,
                cuda_graphs=[list(s) for s in model.graph_shapes] if isinstance(model, FastModel) else [],
            )
        return info


def _within(seconds: float, fn: Callable[[], T], message: str) -> T:
    """``fn()`` in a daemon thread; ``TimeoutError(message)`` when it has not returned after
    `seconds`. A registry call cannot be cancelled, only abandoned: it finishes on its own (its
    own HTTP bounds keep that short) and its result is dropped."""
    box: list[tuple[bool, Any]] = []
    done = threading.Event()

    def work() -> None:
        try:
            box.append((True, fn()))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box.append((False, exc))
        finally:
            done.set()

    threading.Thread(target=work, name="lite-rec-registry-lookup", daemon=True).start()
    if not done.wait(seconds):
        raise TimeoutError(message)
    ok, value = box[0]
    if ok:
        return value
    raise value
