"""A real HTTP server on 127.0.0.1 (port 0) serving in-memory routes, for download tests.

Why not mock urllib: the point is to exercise real sockets, Content-Length handling and
connections that break midway. Use as a context manager or through the `loopback_server`
fixture (import it into a test module: ``from tests.helpers.http_server import loopback_server``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


@dataclass
class Route:
    """What one path answers: a body, a status, or a body cut off after `truncate_at` bytes."""

    body: bytes = b""
    status: int = 200
    content_type: str = "application/octet-stream"
    truncate_at: int | None = None  # send the full Content-Length, then only this many bytes


class LoopbackServer:
    """``ThreadingHTTPServer`` in a daemon thread; `routes` may be changed while it runs."""

    def __init__(self, routes: dict[str, Route | bytes] | None = None) -> None:
        self.routes: dict[str, Route | bytes] = dict(routes or {})
        self.requests: list[str] = []  # paths requested, in order
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server naming
                path = self.path.split("?", 1)[0].split("#", 1)[0]
                server.requests.append(path)
                route = server.routes.get(path)
                if route is None:
                    route = Route(b"not found", status=404, content_type="text/plain")
                elif isinstance(route, bytes):
                    route = Route(route)
                self.send_response(route.status)
                self.send_header("Content-Type", route.content_type)
                self.send_header("Content-Length", str(len(route.body)))
                if route.truncate_at is not None:
                    self.send_header("Connection", "close")
                self.end_headers()
                if route.truncate_at is None:
                    self.wfile.write(route.body)
                    return
                self.wfile.write(route.body[: route.truncate_at])
                self.wfile.flush()
                self.close_connection = True

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="loopback-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def url(self, path: str = "/") -> str:
        """Absolute URL of `path` on this server."""
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> "LoopbackServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "LoopbackServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def loopback_server() -> Iterator[LoopbackServer]:
    """A started server with no routes; add them with ``server.routes["/x"] = b"..."``."""
    with LoopbackServer() as server:
        yield server
