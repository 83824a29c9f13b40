"""A real uvicorn server on 127.0.0.1 and a free port, for tests that need real HTTP/websockets.

    with running_server(app) as server:
        httpx.get(server.url("/items"))

The server runs in a thread of the test process, so an in-memory OpenTelemetry exporter set up by
the test sees its spans. The port comes from a socket bound before the server starts (no race
with other tests picking the same port).
"""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import uvicorn

if TYPE_CHECKING:
    from collections.abc import Iterator

    from starlette.types import ASGIApp

STARTUP_TIMEOUT = 30.0


@dataclass(frozen=True)
class RunningServer:
    host: str
    port: int
    server: uvicorn.Server

    def url(self, path: str = "/", scheme: str = "http") -> str:
        return f"{scheme}://{self.host}:{self.port}{path}"


@contextmanager
def running_server(app: ASGIApp, **config: object) -> Iterator[RunningServer]:
    """Serve ``app`` on 127.0.0.1 until the block ends; extra ``config`` goes to ``uvicorn.Config``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # log_config=None: leave the test process's logging (and caplog) as it is
    options: dict[str, object] = {"log_config": None, "log_level": "warning", "lifespan": "off", **config}
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **options))  # type: ignore[arg-type]
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{port}", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("uvicorn stopped before it started; see the log above")
            if time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start within {STARTUP_TIMEOUT} s")
            time.sleep(0.01)
        yield RunningServer("127.0.0.1", port, server)
    finally:
        server.should_exit = True
        thread.join(STARTUP_TIMEOUT)
        sock.close()
        if thread.is_alive():
            raise RuntimeError(f"uvicorn on port {port} did not stop within {STARTUP_TIMEOUT} s")
