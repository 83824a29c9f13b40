"""What the stack reports of the request it belongs to, read from an ASGI scope by the integrations."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import semconv

# Servers pass any token as a method ("FOO", "X-SECRET-1"); only these become attribute values.
_KNOWN_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "QUERY", "TRACE"}
)


def request_method(scope: Mapping[str, Any]) -> str | None:
    """The request's method if it is a standard one, ``_OTHER`` otherwise (as OpenTelemetry's
    HTTP conventions do), None for a websocket."""
    method = scope.get("method")
    if method is None:
        return None
    return method if method in _KNOWN_METHODS else semconv.OTHER_NAME


def http_route(scope: Mapping[str, Any]) -> str | None:
    """The matched route's template (never the raw path), or None when no route matched."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else None


def route_and_method(scope: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """``http_route`` and ``request_method`` in one call, for the request path."""
    path = getattr(scope.get("route"), "path", None)
    method = scope.get("method")
    if method is not None and method not in _KNOWN_METHODS:
        method = semconv.OTHER_NAME
    return (path if isinstance(path, str) else None), method
