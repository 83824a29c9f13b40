"""uvicorn inside our own event loop, on a socket we bind (port 0 picks a free one)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Iterator

import anyio
import uvicorn
from starlette.types import ASGIApp

GRACEFUL_SHUTDOWN_SECONDS = 10


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # the CLI owns SIGINT/SIGTERM: it stops the traffic first, then this server, then reports
        yield


def bind(host: str, port: int) -> socket.socket:
    """A listening socket for ``running_server``; port 0 picks a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on connections of a socket that says it is
    # TCP, and without it every keep-alive request waits ~40 ms for the client's delayed ACK
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.set_inheritable(True)
    return sock


def base_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class RunningServer:
    def __init__(self, url: str, server: uvicorn.Server) -> None:
        self.url = url
        self._server = server

    def stop_waiting(self) -> None:
        """Shut down without waiting any longer for requests in flight (a second Ctrl-C)."""
        self._server.force_exit = True


@contextlib.asynccontextmanager
async def running_server(
    app: ASGIApp, sock: socket.socket, *, log_level: str = "warning"
) -> AsyncIterator[RunningServer]:
    """Serve ``app`` on ``sock`` (see ``bind``) while the block runs. Exiting waits for in-flight
    requests and their cleanup (uvicorn's graceful shutdown), so metrics read afterwards are complete."""
    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    server = _EmbeddedServer(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        while not server.started:
            if server.should_exit:  # startup failed; uvicorn logged why
                raise RuntimeError("the demo server did not start")
            await anyio.sleep(0.02)
        try:
            yield RunningServer(base_url(sock), server)
        finally:
            server.should_exit = True
