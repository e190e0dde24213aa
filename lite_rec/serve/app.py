"""The HTTP service of the online stage: top-k next items for a history, in milliseconds.

Why this shape:

- One process holds the model in memory (:class:`~lite_rec.serve.watcher.ModelWatcher`: the
  registry's ``champion`` or a local bundle, followed and hot-swapped) and answers through the
  shared :class:`~lite_rec.infer.recommender.Recommender`, so the service, the MLflow pyfunc and batch
  scoring give the same top-k for the same history, and refuse the same inputs.
- Bad input is the client's problem and gets a 4xx that says what to fix, never a 500 and never
  a dead worker. Every refusal has one JSON shape, ``{"error": <code>, "detail": <what to fix>}``
  plus, for some codes, named extras, and is bounded in size (:data:`ERROR_BODY_MAX_BYTES`): ids
  and values quoted back are cut (at most 10 ids of 64 characters each, with their count), so a
  900 KB id does not come back as a 1.8 MB error. The codes: ``malformed_json`` 400 (not UTF-8,
  not JSON, ``NaN``, nested too deep); ``unsupported_media_type`` 415 (a body not sent as
  ``application/json``); ``invalid_request`` 422 (schema mismatch with ``errors``; k outside
  1..min(1000, catalog); an item id that is not a valid string); ``unknown_items`` 422 (with
  ``unknown_item_ids`` and ``unknown_item_count``) unless ``ignore_unknown``;
  ``missing_context`` 422 (a field the served model reads, ``ts``, ``rating`` or
  ``request_time``, is not there) and ``invalid_context`` 422 (it is there but unusable:
  unparseable or out-of-range times, events out of order, a request time before the last event,
  a rating outside the model's levels), both with ``field``, ``reason``, ``model_version`` and
  ``context_fields``; ``too_many_users`` 422; ``payload_too_large`` 413, checked on Content-Length *and* on the bytes that actually
  arrive (:mod:`lite_rec.serve.guard`); ``not_found`` 404; ``method_not_allowed`` 405;
  ``not_ready`` 503 (with ``ready``). The body is parsed here, not by the framework, so that
  every way a body can be broken gets this shape.
- A history entry is an item id or an event ``{"item_id", "ts", "rating"}``; ``request_time``
  (optional: the server's clock) is the time of the prediction. What the served model reads is
  in ``/ready`` (``context_fields``); fields it does not read are accepted and ignored.
- An empty history gets the popularity list, flagged ``fallback``; a history longer than the
  window keeps its most recent items.
- ``/health`` says the process answers; ``/ready`` says a model is loaded and warmed up (503
  before), with the served version, the last check of the registry and the last failure;
  ``/metrics`` is Prometheus text (:mod:`lite_rec.serve.metrics`).

Endpoints are plain ``def``: FastAPI runs them in its thread pool, so the event loop keeps
accepting while a forward pass runs (or a large body is parsed). One forward pass runs at a time,
and concurrent ``/recommend`` calls are scored together (:mod:`lite_rec.serve.micro_batch`): on a
CPU two concurrent passes would each start a full set of intra-op threads on the same cores, and
one pass for 8 users costs far less than 8 passes.
"""

from __future__ import annotations

import argparse
import email.message
import json
import logging
import os
from collections.abc import Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from lite_rec.core.config import ServeConfig
from lite_rec.core.errors import LiteRecError
from lite_rec.infer.fast_path import FastPathOptions
from lite_rec.infer.recommender import ECHO_IDS, ContextError, Recommendation, RecommendError, UnknownItems, echo
from lite_rec.registry.refs import parse_model_ref
from lite_rec.serve.guard import BodyGuard
from lite_rec.serve.metrics import ServiceMetrics
from lite_rec.serve.micro_batch import MicroBatcher
from lite_rec.serve.watcher import ModelWatcher, ServedModel, make_loader

__all__ = ["ERROR_BODY_MAX_BYTES", "BatchRequest", "Event", "RecommendRequest", "create_app", "main", "watcher_for"]

log = logging.getLogger("lite_rec.serve")

ENDPOINTS = ("/recommend", "/recommend/batch", "/health", "/ready", "/metrics")
ItemId = StrictStr | StrictInt  # raw ids; numbers are accepted and read as their decimal string
Time = StrictInt | StrictFloat | StrictStr  # Unix seconds or ISO-8601 with a zone (read by the Recommender)
ERROR_BODY_MAX_BYTES = 16_384  # no error body is larger (ids and values quoted back are cut)
_DETAIL_CHARS = 1000  # a message is cut to this many characters
_ERRORS_SHOWN = 10  # schema errors listed (with their count)
M = TypeVar("M", bound=BaseModel)


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    k: StrictInt = 10
    exclude_history: StrictBool = True
    ignore_unknown: StrictBool = False


class Event(BaseModel):
    """One history item with what happened: when (``ts``) and the rating the user gave (``rating``)."""

    model_config = ConfigDict(extra="forbid")

    item_id: ItemId
    ts: Time | None = None
    rating: StrictInt | StrictFloat | None = None


HistoryItem = ItemId | Event  # a plain id, or an event


class RecommendRequest(_Options):
    """``POST /recommend``: one user's history, oldest first, and the time of the request (None: now)."""

    history: list[HistoryItem]
    request_time: Time | None = None


class BatchRequest(_Options):
    """``POST /recommend/batch``: many users in one forward pass; same options (and request time) for all."""

    histories: list[list[HistoryItem]] = Field(min_length=1)
    request_time: Time | None = None


class BadRequest(Exception):
    """A request refused before it reaches the recommender; rendered by :func:`error_response`."""

    def __init__(self, status: int, error: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail, self.extra = status, error, detail, extra


# ---------------------------------------------------------------------------------------------
# Responses


def _bounded(value: Any, depth: int = 0) -> Any:
    """`value` with every string cut and every list or mapping shortened (error extras)."""
    if isinstance(value, str):
        return echo(value, _DETAIL_CHARS)
    if value is None or isinstance(value, bool | int | float):
        return value
    if depth >= 4:
        return echo(value, 200)
    if isinstance(value, dict):
        return {echo(str(k)): _bounded(v, depth + 1) for k, v in list(value.items())[:50]}
    if isinstance(value, list | tuple):
        return [_bounded(v, depth + 1) for v in list(value)[:ECHO_IDS]]
    return echo(value, 200)


def error_response(status: int, error: str, detail: Any, headers: dict[str, str] | None = None, **extra: Any) -> Response:
    """The one error shape: ``{"error", "detail", **extra}``, at most :data:`ERROR_BODY_MAX_BYTES`
    (strings cut, lists shortened; should the extras still not fit they are dropped)."""
    body = {"error": error, "detail": echo(str(detail), _DETAIL_CHARS), **{k: _bounded(v) for k, v in extra.items()}}
    payload = json.dumps(body, ensure_ascii=False).encode("utf-8")
    if len(payload) > ERROR_BODY_MAX_BYTES:
        payload = json.dumps({"error": error, "detail": body["detail"]}, ensure_ascii=False).encode("utf-8")
    return Response(payload, status_code=status, media_type="application/json", headers=headers)


def _result(rec: Recommendation, history_len: int, window: int) -> dict[str, Any]:
    known = history_len - len(rec.unknown)
    return {
        "items": [{"item_id": i, "score": s, "title": t} for i, s, t in rec.items],
        "fallback": rec.fallback,
        "unknown_item_ids": rec.unknown,
        "history_items_used": 0 if rec.fallback else min(known, window),
    }


def _entries(history: list[Any]) -> list[Any]:
    """A parsed history as the Recommender reads it: ids as sent, events as dicts of their given fields."""
    return [e.model_dump(exclude_none=True) if isinstance(e, Event) else e for e in history]


def _schema_errors(errors: list[Any]) -> dict[str, Any]:
    shown = [{"loc": ["body", *(echo(str(p)) for p in e.get("loc", ()))][:8], "msg": echo(str(e.get("msg", "")), 200),
              "type": echo(str(e.get("type", "")))} for e in errors[:_ERRORS_SHOWN]]
    return {"errors": shown, "error_count": len(errors)}


# ---------------------------------------------------------------------------------------------
# Request bodies: read, checked and parsed here (module docstring)


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


async def _json_body(request: Request) -> bytes:
    """The raw body of a request that declares JSON (415 otherwise); parsed in the thread pool."""
    content_type = request.headers.get("content-type")
    if not _is_json(content_type):
        raise BadRequest(415, "unsupported_media_type",
                         f"send the body as JSON with Content-Type: application/json (got {echo(content_type or 'no Content-Type')})")
    return await request.body()


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _parse(model: type[M], body: bytes) -> M:
    """`body` (UTF-8 JSON, strictly: no NaN or Infinity) validated as `model`, or a :class:`BadRequest`."""
    try:
        data = json.loads(body.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError as exc:
        raise BadRequest(400, "malformed_json", f"the request body is not valid UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(400, "malformed_json", f"the request body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise BadRequest(400, "malformed_json", "the request body is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # NaN / Infinity, a number with more digits than Python reads
        raise BadRequest(400, "malformed_json", f"the request body is not valid JSON: {exc}") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        raise BadRequest(422, "invalid_request", "the request does not match the schema (see errors)", **_schema_errors(errors)) from None


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body of an endpoint that parses its own body."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


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

    @app.exception_handler(BadRequest)
    async def bad_body(_: Request, exc: BadRequest) -> Response:
        return error_response(exc.status, exc.error, exc.detail, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> Response:  # query or path parameters, should any come
        return error_response(422, "invalid_request", "the request does not match the schema (see errors)", **_schema_errors(list(exc.errors())))

    @app.exception_handler(UnknownItems)
    async def unknown(_: Request, exc: UnknownItems) -> Response:
        return error_response(422, "unknown_items", str(exc), unknown_item_ids=[echo(i) for i in exc.item_ids[:ECHO_IDS]],
                              unknown_item_count=len(exc.item_ids))

    @app.exception_handler(ContextError)
    async def bad_context(_: Request, exc: ContextError) -> Response:  # the endpoints name the version (context_error)
        return error_response(422, exc.code, str(exc), field=exc.field, reason=exc.reason, context_fields=exc.fields)

    @app.exception_handler(RecommendError)
    async def bad_request(_: Request, exc: RecommendError) -> Response:
        return error_response(422, "invalid_request", str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, exc.detail, headers=exc.headers)

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception) -> Response:  # a bug: same shape, traceback in the log
        return error_response(500, "internal_error", f"{type(exc).__name__}; see the service log")

    def served_or_503() -> ServedModel:
        served = watcher.current  # read once: this request finishes on this model
        if served is None:
            raise BadRequest(503, "not_ready", "no model is loaded yet; see /ready", ready=watcher.status())
        return served

    def context_error(exc: ContextError, served: ServedModel) -> BadRequest:
        """The 422 of a context field the served model cannot read, naming its version."""
        return BadRequest(422, exc.code, exc.message(f"version {served.version}"), field=exc.field, reason=exc.reason,
                          model_version=served.version, context_fields=exc.fields)

    def count(results: list[Recommendation]) -> list[Recommendation]:
        for r in results:
            metrics.users.labels(fallback=str(r.fallback).lower()).inc()
        return results

    @app.post("/recommend", openapi_extra=_body_doc(RecommendRequest))
    def recommend(body: Annotated[bytes, Depends(_json_body)]) -> Response:
        req = _parse(RecommendRequest, body)
        served = served_or_503()
        history = _entries(req.history)
        k = served.recommender.check_k(req.k)
        try:
            (result,) = count([batcher.recommend(served.recommender, history, k, req.exclude_history, req.ignore_unknown,
                                                 req.request_time)])
        except ContextError as exc:
            raise context_error(exc, served) from None
        res = _result(result, len(history), served.recommender.max_seq_len)
        return JSONResponse({**res, "k": k, "model_version": served.version, "model": served.source})

    @app.post("/recommend/batch", openapi_extra=_body_doc(BatchRequest))
    def recommend_batch(body: Annotated[bytes, Depends(_json_body)]) -> Response:
        req = _parse(BatchRequest, body)
        served = served_or_503()
        if len(req.histories) > cfg.max_batch_users:
            raise BadRequest(422, "too_many_users", f"{len(req.histories)} histories; at most {cfg.max_batch_users} per call (serve.max_batch_users)")
        histories = [_entries(h) for h in req.histories]
        rec = served.recommender
        k = rec.check_k(req.k)
        try:
            prepared = rec.prepare(histories, req.ignore_unknown, [req.request_time] * len(histories))  # checked before the model is taken
        except ContextError as exc:
            raise context_error(exc, served) from None
        results = count(batcher.exclusive(lambda: rec.recommend_prepared(prepared, k, req.exclude_history)))
        metrics.batch_users.observe(len(histories))
        window = served.recommender.max_seq_len
        return JSONResponse({
            "results": [_result(r, len(h), window) for r, h in zip(results, histories, strict=True)],
            "k": k, "model_version": served.version, "model": served.source,
        })

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    def ready() -> JSONResponse:
        current = watcher.current
        status = watcher.status()
        if current is not None and status.get("model_version") == current.version:
            # what a request must carry besides item ids (ts, rating, request_time; [] for an ids-only model)
            status["context_fields"] = current.recommender.context_fields
        return JSONResponse(status, status_code=200 if status["ready"] else 503)

    @app.get("/metrics")
    def prometheus(request: Request) -> Response:
        body, content_type = metrics.exposition(request.headers.get("accept"))
        return Response(body, media_type=content_type)

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
