"""Cancellation through a real uvicorn: a client hanging up mid-stream skips no cleanup, and a
shutdown cancels requests in their endpoint and in their unwind as contextlib would, while
wait_for_unwinds() keeps the loop alive for their cleanups (tests/test_shield_cancellation.py
has the rest, in process)."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.lowlevel
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from exitstack_otel import ExitStackMiddleware, semconv, wait_for_unwinds
from tests.support.cleanups import Cleanup, endless_stream_app, unwind_outcomes
from tests.support.otel_helpers import Sdk
from tests.support.polling import wait_until
from tests.support.servers import running_server

pytestmark = [
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]


def test_real_client_hanging_up_mid_stream_runs_every_callback(sdk: Sdk) -> None:
    cleanup = Cleanup()

    app = endless_stream_app(cleanup, sdk, b"chunk\n" * 100)
    with running_server(app) as server:
        with httpx.Client(base_url=server.url()) as client, client.stream("GET", "/stream") as response:
            assert next(response.iter_bytes()).startswith(b"chunk")
        # the client has hung up; the server notices on its next write
        wait_until(lambda: len(cleanup.log) == 2, "the server to notice the hang-up and unwind")
    assert cleanup.log == ["close", "release"]
    assert sum(unwind_outcomes(sdk).values()) == 1


def test_uvicorn_shutdown_with_requests_in_flight_runs_their_cleanup(sdk: Sdk) -> None:
    # Past timeout_graceful_shutdown uvicorn cancels the requests' tasks (native asyncio cancel)
    # while one is still in its endpoint and another is already unwinding, then ends its event
    # loop as soon as the lifespan shutdown returns: wait_for_unwinds() there keeps it running.
    # As with contextlib, the cancellation interrupts the callback awaiting at that moment (the
    # unwinding request's release); a request cancelled in its endpoint unwinds in full.
    in_endpoint = Cleanup()
    # its unwind lasts until uvicorn has cancelled the requests and begun the lifespan shutdown
    shutdown_begun = anyio.Event()
    unwinding = Cleanup(go_on=shutdown_begun.wait)
    entered = threading.Event()

    async def hang(request: Request) -> PlainTextResponse:
        in_endpoint.push(request.scope)
        entered.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def slow_cleanup(request: Request) -> PlainTextResponse:
        unwinding.push(request.scope)
        return PlainTextResponse("ok")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        # uvicorn has just cancelled the requests; its event loop ends when this returns
        shutdown_begun.set()
        with anyio.move_on_after(10) as limit:
            await wait_for_unwinds()
        drained.append(not limit.cancelled_caught)

    drained: list[bool] = []
    app = ExitStackMiddleware(
        Starlette(routes=[Route("/hang", hang), Route("/slow-cleanup", slow_cleanup)], lifespan=lifespan),
        tracer_provider=sdk.tracer_provider,
        meter_provider=sdk.meter_provider,
    )
    errors: list[BaseException] = []

    def client(url: str) -> None:
        try:
            httpx.get(url, timeout=30)
        except httpx.HTTPError as exc:  # the hanging request is dropped by the shutdown
            errors.append(exc)

    with running_server(app, timeout_graceful_shutdown=0.1, lifespan="on") as server:
        threads = [
            threading.Thread(target=client, args=(server.url(path),)) for path in ("/hang", "/slow-cleanup")
        ]
        for thread in threads:
            thread.start()
        wait_until(lambda: entered.is_set() and unwinding.unwinding.is_set(), "both requests to be in place")
    for thread in threads:
        thread.join(30)

    assert drained == [True]
    assert in_endpoint.log == ["close", "release"]
    assert unwinding.log == ["close"]  # release was awaiting when the cancellation came
    routes = {
        (point.attributes[semconv.HTTP_ROUTE], point.attributes[semconv.UNWIND_OUTCOME]): point.count
        for point in sdk.points(semconv.UNWIND_DURATION)
        if point.count
    }
    assert routes == {
        ("/hang", semconv.OUTCOME_CANCELLED): 1,
        ("/slow-cleanup", semconv.OUTCOME_CANCELLED): 1,
    }
