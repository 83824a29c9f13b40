"""uvicorn's graceful shutdown with cleanups in flight: ``wait_for_unwinds()`` in the lifespan
shutdown keeps the event loop alive until every request that entered an instrumented stack has
unwound it, however many loop turns its cancellation takes to get there.

Past ``timeout_graceful_shutdown`` uvicorn cancels each request's task once (a native asyncio
cancel) and runs the lifespan shutdown; when that returns, ``asyncio.run`` cancels whatever is
left, cleanups included. A streaming response's cancellation has to leave Starlette's task group
first, and an endpoint's ``finally`` may await before the stack unwinds: neither has an unwind
running when the lifespan shutdown starts.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import anyio
import anyio.lowlevel
import httpx
import pytest
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from exitstack_otel import ExitStackMiddleware, get_exit_stack, wait_for_unwinds
from exitstack_otel.fastapi import instrument_fastapi, uninstrument_fastapi
from exitstack_otel.inflight import requests_in_flight
from tests.support.otel_helpers import Sdk
from tests.support.polling import wait_until
from tests.support.servers import running_server

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

# the reproduction: 45 cleanups in flight, most of them behind streaming responses
STREAMS = 30
SLOW_FINALLY = 10
HANGING = 5
GRACEFUL_TIMEOUT = 0.5


class Cleanups:
    """Counts, from any thread, the requests that pushed a cleanup and the cleanups that finished."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.pushed = 0
        self.finished = 0

    def count_push(self) -> None:
        with self._lock:
            self.pushed += 1

    async def run(self) -> None:
        await anyio.lowlevel.checkpoint()  # the cancellation, unshielded, would land here
        await anyio.lowlevel.checkpoint()  # or here, where asyncio redelivers it
        with self._lock:
            self.finished += 1


class Shutdown:
    """The lifespan's record: whether wait_for_unwinds() returned in time, and what was left."""

    def __init__(self) -> None:
        self.drained: list[bool] = []
        self.left_in_flight: list[int] = []

    def lifespan(self, app: object) -> AbstractAsyncContextManager[None]:
        @asynccontextmanager
        async def lifespan() -> AsyncIterator[None]:
            yield
            # uvicorn has cancelled the requests left; its event loop ends when this returns
            with anyio.move_on_after(30) as limit:
                await wait_for_unwinds()
            self.drained.append(not limit.cancelled_caught)
            self.left_in_flight.append(requests_in_flight())

        return lifespan()


def endless_chunks() -> StreamingResponse:
    async def chunks() -> AsyncIterator[bytes]:
        while True:
            yield b"chunk\n"
            await anyio.sleep(0.01)  # a paced stream, not a flood: the client reads until dropped

    return StreamingResponse(chunks())


async def await_in_finally() -> None:
    try:
        await anyio.sleep_forever()
    finally:
        # the endpoint's own cleanup, before the stack unwinds: a few loop turns more
        for _ in range(3):
            await anyio.lowlevel.checkpoint()


def read_until_dropped(url: str) -> None:
    """A client that reads until the server drops it, as uvicorn does past its graceful timeout."""
    try:
        with httpx.stream("GET", url, timeout=30) as response:
            for _ in response.iter_bytes():
                pass
    except httpx.HTTPError:
        pass


def shut_down_with_requests_in_flight(app: ASGIApp, cleanups: Cleanups, paths: list[str]) -> None:
    with running_server(app, lifespan="on", timeout_graceful_shutdown=GRACEFUL_TIMEOUT) as server:
        clients = [threading.Thread(target=read_until_dropped, args=(server.url(path),)) for path in paths]
        for client in clients:
            client.start()
        wait_until(lambda: cleanups.pushed == len(paths), "every request to push its cleanup")
    for client in clients:
        client.join(30)


def test_every_cleanup_of_a_starlette_app_finishes_at_shutdown(sdk: Sdk) -> None:
    cleanups = Cleanups()
    shutdown = Shutdown()

    async def stream(request: Request) -> StreamingResponse:
        get_exit_stack(request).push_async_callback(cleanups.run)
        cleanups.count_push()
        return endless_chunks()

    async def slow_finally(request: Request) -> PlainTextResponse:
        get_exit_stack(request).push_async_callback(cleanups.run)
        cleanups.count_push()
        await await_in_finally()
        raise AssertionError("unreachable")

    async def hang(request: Request) -> PlainTextResponse:
        get_exit_stack(request).push_async_callback(cleanups.run)
        cleanups.count_push()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    app = ExitStackMiddleware(
        Starlette(
            routes=[Route("/stream", stream), Route("/slow-finally", slow_finally), Route("/hang", hang)],
            lifespan=shutdown.lifespan,
        ),
        tracer_provider=sdk.tracer_provider,
        meter_provider=sdk.meter_provider,
    )
    paths = ["/stream"] * STREAMS + ["/slow-finally"] * SLOW_FINALLY + ["/hang"] * HANGING
    shut_down_with_requests_in_flight(app, cleanups, paths)

    assert shutdown.drained == [True]
    assert shutdown.left_in_flight == [0]
    assert cleanups.finished == len(paths)


def test_every_dependency_teardown_of_an_instrumented_fastapi_app_finishes_at_shutdown(sdk: Sdk) -> None:
    cleanups = Cleanups()
    shutdown = Shutdown()

    async def resource() -> AsyncIterator[str]:
        cleanups.count_push()
        try:
            yield "resource"
        finally:  # the request ends cancelled: the exception is thrown in at the yield
            await cleanups.run()

    app = FastAPI(lifespan=shutdown.lifespan)

    # dependencies=: a local function in an annotation could not be resolved by FastAPI
    @app.get("/stream", dependencies=[Depends(resource)])
    async def stream() -> StreamingResponse:
        return endless_chunks()

    @app.get("/slow-finally", dependencies=[Depends(resource)])
    async def slow_finally() -> None:
        await await_in_finally()

    instrument_fastapi(app, tracer_provider=sdk.tracer_provider, meter_provider=sdk.meter_provider)
    try:
        paths = ["/stream"] * STREAMS + ["/slow-finally"] * SLOW_FINALLY
        shut_down_with_requests_in_flight(app, cleanups, paths)
    finally:
        uninstrument_fastapi(app)

    assert shutdown.drained == [True]
    assert shutdown.left_in_flight == [0]
    assert cleanups.finished == len(paths)
