"""A Starlette app whose endpoints push cleanup onto the request's stack, for middleware tests.

Every cleanup appends to ``app.state.log``; the tests read it to see what ran and in which order.
"""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute

from exitstack_otel import ExitStackMiddleware, get_exit_stack

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from starlette.requests import Request
    from starlette.websockets import WebSocket

    from .otel_helpers import Sdk

request_user: contextvars.ContextVar[str] = contextvars.ContextVar("request_user", default="nobody")


class CleanupFailed(Exception):
    pass


class EndpointFailed(Exception):
    pass


def _log(request: Request | WebSocket) -> list[str]:
    log: list[str] = request.app.state.log
    return log


async def ok(request: Request) -> PlainTextResponse:
    get_exit_stack(request).callback(_log(request).append, "cleanup ok")
    return PlainTextResponse("ok")


async def stream(request: Request) -> StreamingResponse:
    log = _log(request)
    get_exit_stack(request).callback(log.append, "cleanup stream")

    async def chunks() -> AsyncIterator[str]:
        for number in range(3):
            log.append(f"chunk {number}")
            yield f"chunk {number}\n"

    return StreamingResponse(chunks(), media_type="text/plain")


async def failing_cleanup(request: Request) -> PlainTextResponse:
    log = _log(request)
    stack = get_exit_stack(request)

    def broken_close() -> None:
        log.append("cleanup broken")
        raise CleanupFailed("cleanup failed")

    stack.callback(log.append, "cleanup first pushed")
    stack.callback(broken_close)
    stack.callback(log.append, "cleanup last pushed")
    return PlainTextResponse("ok")


async def failing_endpoint(request: Request) -> PlainTextResponse:
    get_exit_stack(request).callback(_log(request).append, "cleanup after failure")
    raise EndpointFailed("endpoint failed")


async def suppressed_background_error(request: Request) -> PlainTextResponse:
    log = _log(request)

    def swallow_endpoint_failures(exc_type: type[BaseException] | None, exc: object, tb: object) -> bool:
        log.append(f"swallowed {exc}")
        return exc_type is EndpointFailed

    async def failing_background_task() -> None:
        raise EndpointFailed("background task failed")

    get_exit_stack(request).push(swallow_endpoint_failures)
    # the task runs after the response is sent, its error reaches the stack's exit callbacks
    return PlainTextResponse("ok", background=BackgroundTask(failing_background_task))


async def context_variable(request: Request) -> PlainTextResponse:
    log = _log(request)
    request_user.set("alice")
    get_exit_stack(request).callback(lambda: log.append(f"cleanup sees {request_user.get()}"))
    return PlainTextResponse("ok")


async def per_request(request: Request) -> PlainTextResponse:
    log = _log(request)
    user = request.query_params["user"]
    request_user.set(user)
    stack = get_exit_stack(request)

    async def close_session() -> None:
        await anyio.lowlevel.checkpoint()  # let other requests' unwinds interleave with this one
        log.append(
            f"{user}: cleanup sees {request_user.get()} on its own stack {get_exit_stack(request) is stack}"
        )

    stack.push_async_callback(close_session)
    await anyio.lowlevel.checkpoint()
    return PlainTextResponse(user)


async def form(request: Request) -> PlainTextResponse:
    data = await request.form()
    get_exit_stack(request).push_async_callback(data.close)
    return PlainTextResponse(",".join(sorted(data.keys())))


async def websocket(websocket: WebSocket) -> None:
    log = _log(websocket)
    get_exit_stack(websocket).callback(log.append, "cleanup websocket")
    await websocket.accept()
    request_user.set("bob")
    get_exit_stack(websocket).callback(lambda: log.append(f"cleanup sees {request_user.get()}"))
    message = await websocket.receive_text()
    await websocket.send_text(f"echo {message}")
    await websocket.close()
    log.append("websocket closed")


def make_app(sdk: Sdk, **middleware_options: Any) -> Starlette:
    app = Starlette(
        routes=[
            Route("/ok", ok),
            Route("/stream", stream),
            Route("/failing-cleanup", failing_cleanup),
            Route("/failing-endpoint", failing_endpoint),
            Route("/context-variable", context_variable),
            Route("/suppressed", suppressed_background_error),
            Route("/form", form, methods=["POST"]),
            Route("/per-request", per_request),
            WebSocketRoute("/ws", websocket),
        ],
        middleware=[
            Middleware(
                ExitStackMiddleware,
                **{
                    "tracer_provider": sdk.tracer_provider,
                    "meter_provider": sdk.meter_provider,
                    **middleware_options,
                },
            )
        ],
    )
    app.state.log = []
    return app
