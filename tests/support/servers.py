"""Servers in a thread of the test process, on 127.0.0.1 and a free port: a real uvicorn for the app
under test (``running_server``), and the standard library's HTTP server for the fakes that receive
what it sends (``serving_http``: an OTLP receiver, Alertmanager's webhook).

    with running_server(app) as server:
        httpx.get(server.url("/items"))

The server thread has its own event loop, so tests drive it with httpx or websockets from either
anyio backend, and an in-memory OpenTelemetry exporter set up by the test sees its spans. The
listening socket is the demo's (``exitstack_otel.demo.server.bind``), bound before the server
starts (no race with other tests for the port) and made with ``IPPROTO_TCP``, so that asyncio
sets ``TCP_NODELAY`` on every connection as it does for a server that binds its own port; with
protocol 0 it does not, and each keep-alive request waits some 40 ms for a delayed ACK.
Leaving the block waits for requests in flight and their cleanup (uvicorn's graceful shutdown):
numbers read afterwards are final.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from typing import TYPE_CHECKING

import uvicorn

from exitstack_otel.demo.server import bind

from .polling import wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator

    from starlette.types import ASGIApp

# seconds; generous bounds for a loaded machine, never measurements
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 60.0


@dataclass(frozen=True)
class RunningServer:
    host: str
    port: int
    server: uvicorn.Server

    def url(self, path: str = "", scheme: str = "http") -> str:
        return f"{scheme}://{self.host}:{self.port}{path}"


@contextmanager
def running_server(app: ASGIApp, **config: object) -> Iterator[RunningServer]:
    """Serve ``app`` until the block ends; ``config`` goes to ``uvicorn.Config`` over these defaults."""
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    # log_config=None: leave the test process's logging (and caplog) as it is
    options: dict[str, object] = {
        "log_config": None,
        "log_level": "warning",
        "lifespan": "off",
        # uvicorn's pure-Python parser on asyncio unless a test asks for uvloop and httptools (the
        # dev group installs both, and "auto" would pick them): hostile raw requests that h11
        # hands to the app, httptools refuses itself
        "loop": "asyncio",
        "http": "h11",
        "access_log": False,
        **config,
    }
    server = uvicorn.Server(uvicorn.Config(app, **options))  # type: ignore[arg-type]
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{port}", daemon=True
    )
    thread.start()
    try:

        def started() -> bool:
            if not thread.is_alive():
                raise RuntimeError("uvicorn stopped before it started; see the log above")
            return server.started

        wait_until(started, f"uvicorn to start on port {port}", STARTUP_TIMEOUT)
        yield RunningServer("127.0.0.1", port, server)
    finally:
        server.should_exit = True
        thread.join(STOP_TIMEOUT)
        sock.close()
        if thread.is_alive():
            raise RuntimeError(f"uvicorn on port {port} did not stop within {STOP_TIMEOUT} s")


@contextmanager
def serving_http(server: ThreadingHTTPServer) -> Iterator[str]:
    """Serve with ``server`` (bound already) until the block ends; yields its base URL."""
    thread = threading.Thread(target=server.serve_forever, name="http-fake", daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host!s}:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(STOP_TIMEOUT)
