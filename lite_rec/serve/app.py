"""The HTTP service of the online stage: top-k next items for a history, in milliseconds.

Why this shape (issue 6):

- One process holds the model in memory (:class:`~lite_rec.serve.watcher.ModelWatcher`: the
  registry's ``champion`` or a local bundle, followed and hot-swapped) and answers through the
  shared :class:`~lite_rec.infer.recommender.Recommender`, so the service, the MLflow pyfunc and batch
  scoring give the same top-k for the same history.
- Bad input is the client's problem and gets a 4xx that says what to fix, never a 500 and never
  a dead worker: unknown ids 422 (naming them) unless ``ignore_unknown``; an empty history gets
  the popularity list, flagged ``fallback``; a history longer than the window keeps its most
  recent items; k outside 1..min(max_k, catalog) 422; malformed JSON 400; a schema mismatch 422;
  a body over ``serve.max_body_bytes`` 413, checked on Content-Length *and* on the bytes that
  actually arrive (a chunked or lying client cannot get past it).
- ``/health`` says the process answers; ``/ready`` says a model is loaded and warmed up (503
  before), with the served version and the last load failure; ``/metrics`` is Prometheus text.

Endpoints are plain ``def``: FastAPI runs them in its thread pool, so the event loop keeps
accepting while a forward pass runs. One forward pass runs at a time, and concurrent
``/recommend`` calls are scored together (:mod:`lite_rec.serve.micro_batch`): on a CPU two concurrent
passes would each start a full set of intra-op threads on the same cores, and one pass for 8
users costs far less than 8 passes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from lite_rec.core.config import ServeConfig
from lite_rec.core.errors import LiteRecError
from lite_rec.infer.fast_path import FastPathOptions
from lite_rec.infer.recommender import Recommendation, RecommendError, UnknownItems
from lite_rec.registry.versions import parse_model_ref
from lite_rec.serve.guard import BodyGuard
from lite_rec.serve.metrics import ServiceMetrics
from lite_rec.serve.micro_batch import MicroBatcher
from lite_rec.serve.watcher import ModelWatcher, ServedModel, make_loader

__all__ = ["BatchRequest", "RecommendRequest", "create_app", "main", "watcher_for"]

log = logging.getLogger("lite_rec.serve")

ENDPOINTS = ("/recommend", "/recommend/batch", "/health", "/ready", "/metrics")
ItemId = StrictStr | StrictInt  # raw ids; numbers are accepted and read as their decimal string


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    k: StrictInt = 10
    exclude_history: StrictBool = True
    ignore_unknown: StrictBool = False


class RecommendRequest(_Options):
    """``POST /recommend``: one user's history, oldest first."""

    history: list[ItemId]


class BatchRequest(_Options):
    """``POST /recommend/batch``: many users in one forward pass; same options for all."""

    histories: list[list[ItemId]] = Field(min_length=1)


# ---------------------------------------------------------------------------------------------
# Responses


def _error(status: int, error: str, detail: Any, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail, **extra}, status_code=status)


def _result(rec: Recommendation, history_len: int, window: int) -> dict[str, Any]:
    known = history_len - len(rec.unknown)
    return {
        "items": [{"item_id": i, "score": s, "title": t} for i, s, t in rec.items],
        "fallback": rec.fallback,
        "unknown_item_ids": rec.unknown,
        "history_items_used": 0 if rec.fallback else min(known, window),
    }


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    return [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))} for e in exc.errors()]


# ---------------------------------------------------------------------------------------------
# The app


def create_app(watcher: ModelWatcher, cfg: ServeConfig = ServeConfig(), *, start_watcher: bool = True) -> FastAPI:
    """The FastAPI app over `watcher` (its metrics are the app's). Starts and stops the watcher
    with the app's lifespan unless `start_watcher` is False (tests that load synchronously)."""
    metrics = watcher.metrics
    batcher = MicroBatcher(cfg.coalesce_max_users, on_batch=lambda n: metrics.batch_users.observe(n))

    @asynccontextmanager
    async def lifespan(_: FastAPI):  # type: ignore[no-untyped-def]
        if start_watcher:
            watcher.start()
        yield
        watcher.stop()

    app = FastAPI(title="lite-rec", version="1", lifespan=lifespan)
    app.add_middleware(BodyGuard, metrics=metrics, max_bytes=cfg.max_body_bytes, endpoints=ENDPOINTS)  # type: ignore[arg-type]

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _validation_errors(exc)
        if any(e["type"] == "json_invalid" for e in errors):
            return _error(400, "malformed_json", "the request body is not valid JSON", errors=errors)
        return _error(422, "invalid_request", "the request does not match the schema (see errors)", errors=errors)

    @app.exception_handler(UnknownItems)
    async def unknown(_: Request, exc: UnknownItems) -> JSONResponse:
        return _error(422, "unknown_items", str(exc), unknown_item_ids=exc.item_ids)

    @app.exception_handler(RecommendError)
    async def bad_request(_: Request, exc: RecommendError) -> JSONResponse:
        return _error(422, "invalid_request", str(exc))

    def served_or_503() -> ServedModel | JSONResponse:
        served = watcher.current  # read once: this request finishes on this model
        if served is None:
            return _error(503, "not_ready", "no model is loaded yet; see /ready", ready=watcher.status())
        return served

    def check_k(served: ServedModel, k: int) -> None:
        limit = min(cfg.max_k, served.recommender.num_items)
        if not 1 <= k <= limit:
            raise RecommendError(f"k must be between 1 and {limit} (max_k or the catalog size); got {k}")

    def count(results: list[Recommendation]) -> list[Recommendation]:
        for r in results:
            metrics.users.inc(fallback=str(r.fallback).lower())
        return results

    @app.post("/recommend")
    def recommend(req: RecommendRequest) -> Response:
        served = served_or_503()
        if isinstance(served, JSONResponse):
            return served
        history = [str(i) for i in req.history]
        check_k(served, req.k)
        (result,) = count([batcher.recommend(served.recommender, history, req.k, req.exclude_history, req.ignore_unknown)])
        body = _result(result, len(history), served.recommender.max_seq_len)
        return JSONResponse({**body, "k": req.k, "model_version": served.version, "model": served.source})

    @app.post("/recommend/batch")
    def recommend_batch(req: BatchRequest) -> Response:
        served = served_or_503()
        if isinstance(served, JSONResponse):
            return served
        if len(req.histories) > cfg.max_batch_users:
            return _error(422, "too_many_users", f"{len(req.histories)} histories; at most {cfg.max_batch_users} per call (serve.max_batch_users)")
        histories = [[str(i) for i in h] for h in req.histories]
        check_k(served, req.k)
        rec = served.recommender
        results = count(batcher.exclusive(lambda: rec.recommend(histories, req.k, req.exclude_history, req.ignore_unknown)))
        metrics.batch_users.observe(len(histories))
        window = served.recommender.max_seq_len
        return JSONResponse({
            "results": [_result(r, len(h), window) for r, h in zip(results, histories, strict=True)],
            "k": req.k, "model_version": served.version, "model": served.source,
        })

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    def ready() -> JSONResponse:
        status = watcher.status()
        return JSONResponse(status, status_code=200 if status["ready"] else 503)

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(metrics.render(), media_type=ServiceMetrics.CONTENT_TYPE)

    return app


# ---------------------------------------------------------------------------------------------
# Command line: python -m lite_rec.serve.app --model models:/lite-rec-ml1m@champion


def watcher_for(model: str, cfg: ServeConfig, tracking_uri: str | None = None, metrics: ServiceMetrics | None = None) -> ModelWatcher:
    """A watcher for `model` with the fast path and polling that `cfg` asks for."""
    options = FastPathOptions(bf16=cfg.bf16, cuda_graphs=cfg.cuda_graphs, batch_buckets=cfg.batch_buckets,
                              length_buckets=cfg.length_buckets, cuda_attention=cfg.cuda_attention)
    # One core stays free for the event loop, JSON and the load balancer's probes: on a shared
    # 2-core box two intra-op threads spin against the HTTP side (measured 20x slower under load).
    threads = cfg.torch_threads or max(1, (os.cpu_count() or 2) - 1)
    return ModelWatcher(
        parse_model_ref(model), make_loader(cfg.device, options, threads), poll_interval_s=cfg.poll_interval_s,
        tracking_uri=tracking_uri, metrics=metrics, cache_dir=cfg.cache_dir,
    )


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lite-rec serve", description="Serve top-k recommendations over HTTP.")
    p.add_argument("--model", help="models:/<name>@<alias>, models:/<name>/<version> or a bundle directory "
                   "(default: serve.model, else models:/<registered model>@champion of --dataset)")
    p.add_argument("--dataset", help="dataset name or YAML: its config supplies serve.* and tracking.* settings")
    p.add_argument("--profile")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="config override (repeatable)")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--poll-interval", type=float, help="seconds between alias checks (0 = do not follow)")
    p.add_argument("--tracking-uri", help="MLflow tracking/registry URI (default: the config's, else MLFLOW_TRACKING_URI)")
    p.add_argument("--log-level", default="info")
    p.add_argument("--access-log", action="store_true", help="log every request (off: /metrics counts them)")
    return p.parse_args(argv)


def _resolve(args: argparse.Namespace) -> tuple[ServeConfig, str, str | None]:
    """ServeConfig (config file + CLI flags), the model reference and the tracking URI."""
    flags = {"host": args.host, "port": args.port, "device": args.device, "poll_interval_s": args.poll_interval, "model": args.model}
    flags = {k: v for k, v in flags.items() if v is not None}
    tracking_uri = args.tracking_uri
    if args.dataset:
        from lite_rec.core.config import build_config
        from lite_rec.core.env import apply_local_defaults

        overrides = list(args.set) + [f"serve.{k}={json.dumps(v)}" for k, v in flags.items()]
        full = build_config(args.dataset, overrides, profile=args.profile)
        apply_local_defaults(full.data_dir)
        cfg = full.serve
        if tracking_uri is None:
            from lite_rec.registry.client import resolve_tracking_uri

            tracking_uri = resolve_tracking_uri(full)
        if cfg.model is None:
            from lite_rec.registry.versions import CHAMPION, registered_model_name

            cfg = cfg.model_copy(update={"model": f"models:/{registered_model_name(full)}@{CHAMPION}"})
    else:
        from lite_rec.core.config import parse_override

        values: dict[str, Any] = {}
        for text in args.set:  # without a dataset only serve.* settings make sense
            nested = parse_override(text if text.startswith("serve.") else f"serve.{text}")["serve"]
            values.update(nested)
        cfg = ServeConfig(**{**values, **flags})
    if not cfg.model:
        raise LiteRecError("no model to serve: pass --model models:/<name>@<alias> (or a bundle directory) or --dataset")
    return cfg, cfg.model, tracking_uri


def main(argv: Sequence[str] | None = None) -> int:
    """Run the service until SIGINT/SIGTERM (uvicorn drains requests in flight on shutdown)."""
    import uvicorn

    args = _parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg, model, tracking_uri = _resolve(args)
        watcher = watcher_for(model, cfg, tracking_uri)
    except (LiteRecError, ValueError) as exc:
        print(f"error: {exc}")
        return 2
    if watcher.ref.path is not None and not Path(watcher.ref.path).is_dir():
        print(f"error: {watcher.ref.path}: no bundle directory there")
        return 2
    app = create_app(watcher, cfg)
    log.info("lite-rec serve: %s on http://%s:%d (device %s)", model, cfg.host, cfg.port, cfg.device)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=args.log_level, access_log=args.access_log)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
