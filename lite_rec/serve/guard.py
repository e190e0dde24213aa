"""An ASGI guard in front of the app: request body size limit and per-request metrics.

Why outside FastAPI's routing: a 413 must come before anything parses the body, and it must
hold for the bytes that actually arrive, not only for what Content-Length claims (a chunked
upload has none, a client may lie). So the guard reads the body itself, at most `max_bytes`
of it, answers 413 the moment the limit is passed, and hands the app the body from memory.
It also times every request and counts it by endpoint and status (:mod:`lite_rec.serve.metrics`);
endpoints outside `endpoints` count as ``other`` to keep label cardinality bounded.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from lite_rec.serve.metrics import ServiceMetrics

__all__ = ["BodyGuard"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]


class BodyGuard:
    """Rejects bodies over `max_bytes` with 413 before the app sees them; records every request.

    The body is read here in full (bounded by the limit) and handed to the app from memory, so
    the check covers the bytes that arrive, not only what Content-Length claims.
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, max_bytes: int, endpoints: Sequence[str] = ()) -> None:
        self.app, self.metrics, self.max_bytes, self.endpoints = app, metrics, max_bytes, frozenset(endpoints)

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path = scope.get("path", "")
        endpoint = path if path in self.endpoints else "other"
        status = [500]

        async def send_recorded(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            headers = dict(scope.get("headers") or [])
            declared = headers.get(b"content-length")
            if declared is not None and declared.strip().isdigit() and int(declared) > self.max_bytes:
                await _reject(send_recorded, 413, "payload_too_large", f"request body of {int(declared)} bytes exceeds the limit of {self.max_bytes} bytes")
                return
            body, too_large = await _read_body(receive, self.max_bytes)
            if too_large:
                await _reject(send_recorded, 413, "payload_too_large", f"request body exceeds the limit of {self.max_bytes} bytes")
                return
            await self.app(scope, _replay(body, receive), send_recorded)
        finally:
            self.metrics.record_request(endpoint, status[0], time.perf_counter() - started)


async def _read_body(receive: Callable[[], Awaitable[Message]], limit: int) -> tuple[bytes, bool]:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks), False
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"", True
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), False


def _replay(body: bytes, receive: Callable[[], Awaitable[Message]]) -> Callable[[], Awaitable[Message]]:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: wait for the disconnect, as the server would

    return replay


async def _reject(send: Callable[[Message], Awaitable[None]], status: int, error: str, detail: str) -> None:
    payload = json.dumps({"error": error, "detail": detail}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": payload})
