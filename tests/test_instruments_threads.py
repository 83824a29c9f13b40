"""One set of instruments per meter provider, whatever the threads: several event loops, each in its own
thread, sending their first requests at the same moment, count every push and every unwind in progress.

Each thread built its own ``Instruments`` for the same provider once; the SDK ignores the repeated
registration of an observable instrument, so the pushes counted by all but one set were never read
(``exitstack.callback.pushed`` far below the callbacks run) and unwinds in progress went unseen.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import TYPE_CHECKING

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from exitstack_otel import ExitStackMiddleware, get_exit_stack, semconv
from exitstack_otel.instruments import instruments_for
from tests.support.otel_helpers import Sdk, attrs, histogram_points

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from starlette.types import ASGIApp

THREADS = 4
REQUESTS = 40  # per thread
CALLBACKS = 5  # per request
BARRIER_TIMEOUT = 60.0  # seconds; a bound for a loaded machine, never a measurement


def close_resource() -> None:
    pass


def build_app(sdk: Sdk, endpoint_hook: Callable[[], None] = lambda: None) -> ASGIApp:
    def hold() -> None:
        endpoint_hook()

    async def endpoint(request: Request) -> PlainTextResponse:
        stack = get_exit_stack(request)
        for _ in range(CALLBACKS):
            stack.callback(close_resource)
        stack.callback(hold)  # runs first: unwinds last-in first-out
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/", endpoint)])
    return ExitStackMiddleware(app, tracer_provider=sdk.tracer_provider, meter_provider=sdk.meter_provider)


@pytest.fixture(autouse=True)
def _switch_threads_often() -> Iterator[None]:
    # a switch between any two bytecodes, so that a check-then-create race shows on every run
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(interval)


def run_threads(target: Callable[[int], None]) -> None:
    failures: list[BaseException] = []

    def run(index: int) -> None:
        try:
            target(index)
        except BaseException as exc:  # reported by the caller
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(BARRIER_TIMEOUT * 2)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []


async def send(app: ASGIApp, count: int) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:

        async def get() -> None:
            assert (await http.get("/")).status_code == 200

        async with anyio.create_task_group() as group:
            for _ in range(count):
                group.start_soon(get)


def pushed(sdk: Sdk, name: str) -> int:
    return sum(
        int(point.value)
        for point in sdk.points(semconv.CALLBACK_PUSHED)
        if attrs(point)[semconv.CALLBACK_NAME] == name
    )


def executed(sdk: Sdk, name: str) -> int:
    points = histogram_points(sdk.metrics()[semconv.CALLBACK_DURATION])
    return sum(point.count for point in points if attrs(point)[semconv.CALLBACK_NAME] == name)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("shared_app", [True, False], ids=["one-app", "app-per-thread"])
def test_first_requests_from_four_loops_at_once_are_all_counted(
    sdk: Sdk, backend: str, shared_app: bool, caplog: pytest.LogCaptureFixture
) -> None:
    start = threading.Barrier(THREADS, timeout=BARRIER_TIMEOUT)
    shared = build_app(sdk)

    def loop(index: int) -> None:
        app = shared if shared_app else build_app(sdk)
        start.wait()
        anyio.run(send, app, REQUESTS, backend=backend)

    with caplog.at_level(logging.WARNING):
        run_threads(loop)
    expected = THREADS * REQUESTS * CALLBACKS
    assert executed(sdk, "close_resource") == expected
    assert pushed(sdk, "close_resource") == expected
    assert pushed(sdk, "build_app.<locals>.hold") == THREADS * REQUESTS
    # the SDK says so when an instrument is registered a second time
    assert [r.getMessage() for r in caplog.records if "created already" in r.getMessage()] == []


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_unwinds_in_progress_in_four_loops_are_all_seen(sdk: Sdk, backend: str) -> None:
    start = threading.Barrier(THREADS, timeout=BARRIER_TIMEOUT)
    inside = threading.Barrier(THREADS + 1, timeout=BARRIER_TIMEOUT)  # the four unwinds and this test
    release = threading.Event()

    def hold() -> None:
        inside.wait()
        assert release.wait(BARRIER_TIMEOUT)

    def loop(index: int) -> None:
        app = build_app(sdk, hold)  # each its own: four TelemetrySources, one provider
        start.wait()
        anyio.run(send, app, 1, backend=backend)

    runner = threading.Thread(target=run_threads, args=(loop,))
    runner.start()
    try:
        inside.wait()  # every thread is in its unwind now
        active = sum(point.value for point in sdk.points(semconv.UNWIND_ACTIVE))
    finally:
        release.set()
        runner.join(BARRIER_TIMEOUT * 2)
    assert active == THREADS
    assert sum(point.value for point in sdk.points(semconv.UNWIND_ACTIVE)) == 0
    assert instruments_for(sdk.meter_provider) is instruments_for(sdk.meter_provider)
