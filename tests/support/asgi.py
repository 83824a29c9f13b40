"""Raw ASGI for tests below the server: an HTTP scope, and one request driven by hand.

scripts/check_api_only.py uses it too, in a venv without the OpenTelemetry SDK: nothing here may
import the SDK.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AsyncExitStack
from typing import Any

import anyio
from starlette.types import ASGIApp, Receive, Scope, Send

from exitstack_otel import DEFAULT_SCOPE_KEY


def http_scope(
    path: str = "/", *, method: str = "GET", headers: Iterable[tuple[bytes, bytes]] = ()
) -> dict[str, Any]:
    """What a server hands an app for ``method path`` from 127.0.0.1, as ASGI 3.0 spells it: a Host
    header, then ``headers``."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
    }


async def get_status(app: Any, path: str) -> int:
    """One GET with an empty body through ``app``; the response's status."""
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(http_scope(path), receive, send)
    return statuses[0]


async def never_receive() -> dict[str, Any]:
    """A client that sends nothing more: the request body never ends, no disconnect comes."""
    await anyio.sleep_forever()
    raise AssertionError("unreachable")


async def discard(message: Any) -> None:
    """A client that reads nothing it is sent."""


class ContextlibMiddleware:
    """FastAPI's ``AsyncExitStackMiddleware``: a plain ``AsyncExitStack`` in ``async with`` around
    the app, the behaviour ``ExitStackMiddleware`` promises to keep."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with AsyncExitStack() as stack:
            scope[DEFAULT_SCOPE_KEY] = stack
            await self.app(scope, receive, send)
