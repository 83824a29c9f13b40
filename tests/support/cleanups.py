"""The cleanup the cancellation tests push: it says whether it ran to its end, and when it began."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

import anyio.lowlevel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from exitstack_otel import ExitStackMiddleware, get_exit_stack, semconv

if TYPE_CHECKING:
    from starlette.types import Scope

    from .otel_helpers import Sdk


class Cleanup:
    """Two callbacks per request: a sync one, and an async one that awaits before it finishes.

    ``release`` awaits twice: a cancellation pending when the unwind starts lands at the first
    await without the shield (trio at once; asyncio when anyio redelivers it, at one of the two).
    Between them it awaits ``go_on()``, if given: the test holds the unwind open until it has
    cancelled what it meant to, so that no cancellation can come after the unwind by chance.
    """

    def __init__(self, go_on: Callable[[], Awaitable[object]] | None = None) -> None:
        self.go_on = go_on
        self.log: list[str] = []
        self.unwinding = threading.Event()  # a thread's event: server tests wait for it from theirs

    def push(self, scope: Scope) -> None:
        stack = get_exit_stack(scope)
        stack.push_async_callback(self.release)
        stack.callback(self.close)

    def close(self) -> None:
        self.log.append("close")

    async def release(self) -> None:
        self.unwinding.set()
        await anyio.lowlevel.checkpoint()
        if self.go_on is not None:
            await self.go_on()
        await anyio.lowlevel.checkpoint()  # a second await: a cancellation redelivered on asyncio lands here
        self.log.append("release")


def endless_stream_app(cleanup: Cleanup, sdk: Sdk, chunk: bytes) -> ExitStackMiddleware:
    """``GET /stream``: pushes ``cleanup``, then streams ``chunk`` until the client goes away."""

    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield chunk
            await anyio.lowlevel.checkpoint()

    async def stream(request: Request) -> StreamingResponse:
        cleanup.push(request.scope)
        return StreamingResponse(endless())

    return ExitStackMiddleware(
        Starlette(routes=[Route("/stream", stream)]),
        tracer_provider=sdk.tracer_provider,
        meter_provider=sdk.meter_provider,
    )


def unwind_outcomes(sdk: Sdk) -> dict[str, int]:
    return {
        point.attributes[semconv.UNWIND_OUTCOME]: point.count
        for point in sdk.points(semconv.UNWIND_DURATION)
        if point.count
    }
