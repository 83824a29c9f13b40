"""The requests the benchmarks send: one shape each for the ASGI scope in process and the bytes on
the wire to a real server, so that both measure the same request."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

# what httpx sends by default: a typical API client
_CLIENT_HEADERS = (
    (b"host", b"127.0.0.1:8000"),
    (b"accept", b"*/*"),
    (b"accept-encoding", b"gzip, deflate"),
    (b"connection", b"keep-alive"),
    (b"user-agent", b"python-httpx/0.28.1"),
)


class CleanupFailed(Exception):
    """What the failure storm's failing cleanup raises: the one exception its loop expects."""


@dataclass(frozen=True)
class RequestShape:
    method: str
    path_template: str
    """``{n}`` stands for the request's callback count"""
    body: bytes = b""
    content_type: bytes | None = None
    status: int = 200
    raises: tuple[type[Exception], ...] = ()
    """what the app raises out of its ASGI call, by design; ``except ()`` catches nothing"""

    def path(self, callbacks: int) -> str:
        return self.path_template.format(n=callbacks)

    @cached_property
    def headers(self) -> list[tuple[bytes, bytes]]:
        headers = list(_CLIENT_HEADERS)
        if self.method != "GET":
            headers.append((b"content-length", str(len(self.body)).encode()))
        if self.content_type is not None:
            headers.append((b"content-type", self.content_type))
        return headers

    @cached_property
    def _scope_template(self) -> dict[str, Any]:
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": self.method,
            "scheme": "http",
            "root_path": "",
            "query_string": b"",
            "headers": self.headers,
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 8000),
        }

    def scope(self, callbacks: int) -> dict[str, Any]:
        """A fresh scope per request: apps store in it."""
        path = self.path_template.format(n=callbacks)
        return {**self._scope_template, "path": path, "raw_path": path.encode()}

    async def receive(self) -> dict[str, Any]:
        return {"type": "http.request", "body": self.body, "more_body": False}

    def http(self, callbacks: int) -> bytes:
        """The request as an HTTP/1.1 client sends it on a keep-alive connection."""
        head = f"{self.method} {self.path(callbacks)} HTTP/1.1\r\n".encode()
        head += b"".join(name + b": " + value + b"\r\n" for name, value in self.headers)
        return head + b"\r\n" + self.body


GET_CALLBACKS = RequestShape("GET", "/cb/{n}")
# every request's unwind fails after its response was sent (200): ServerErrorMiddleware can no
# longer answer 500 and re-raises, so the exception leaves the app in every variant alike
GET_FAILING = RequestShape("GET", "/fail/{n}", raises=(CleanupFailed,))
POST_ITEM = RequestShape(
    "POST", "/items", body=b'{"name": "widget", "quantity": 3}', content_type=b"application/json"
)
