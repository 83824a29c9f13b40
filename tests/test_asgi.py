"""What the stack reports of its request: ``route_and_method`` (the request path's one call) says
exactly what ``http_route`` and ``request_method`` say."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.routing import Route, WebSocketRoute

from exitstack_otel.asgi import http_route, request_method, route_and_method


async def _endpoint(scope: Any, receive: Any, send: Any) -> None:
    pass


class _PathIsNoString:
    path = 42


@pytest.mark.parametrize(
    "scope",
    [
        {"type": "http", "method": "GET", "route": Route("/items/{item_id}", _endpoint)},
        {"type": "http", "method": "X-SECRET-1", "route": Route("/items", _endpoint)},
        {"type": "http", "method": "QUERY"},
        {"type": "http", "method": "POST", "route": _PathIsNoString()},
        {"type": "websocket", "route": WebSocketRoute("/ws", _endpoint)},
        {"type": "websocket"},
    ],
)
def test_route_and_method_is_http_route_and_request_method(scope: dict[str, Any]) -> None:
    assert route_and_method(scope) == (http_route(scope), request_method(scope))
    assert route_and_method(scope)[1] != "X-SECRET-1"
