"""Cancellation never skips a cleanup: every pushed callback runs to its end, the unwind records
``cancelled``, and the cancellation propagates once the stack is empty."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.lowlevel
import anyio.to_thread
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from exitstack_otel import ExitStackMiddleware, get_exit_stack, semconv, wait_for_unwinds
from tests.support.otel_helpers import Sdk
from tests.support.polling import wait_until
from tests.support.servers import running_server

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


class Cleanup:
    """Two callbacks per request: a sync one, and an async one that awaits before it finishes."""

    def __init__(self, pause: float = 0.02) -> None:
        self.pause = pause
        self.log: list[str] = []
        self.unwinding = threading.Event()

    def push(self, scope: Scope) -> None:
        stack = get_exit_stack(scope)
        stack.push_async_callback(self.release)
        stack.callback(self.close)

    def close(self) -> None:
        self.log.append("close")

    async def release(self) -> None:
        self.unwinding.set()
        await anyio.sleep(self.pause)
        await anyio.sleep(self.pause)  # a second await: a cancellation redelivered on asyncio would land here
        self.log.append("release")


def unwind_outcomes(sdk: Sdk) -> dict[str, int]:
    return {
        point.attributes[semconv.UNWIND_OUTCOME]: point.count
        for point in sdk.points(semconv.UNWIND_DURATION)
        if point.count
    }


def request_scope(path: str = "/") -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }


async def never_receive() -> Message:
    await anyio.sleep_forever()
    raise AssertionError("unreachable")


async def discard(message: Message) -> None:
    pass


@pytest.mark.anyio
async def test_cancel_scope_around_the_app_runs_every_callback_then_propagates(sdk: Sdk) -> None:
    cleanup = Cleanup()
    started = anyio.Event()
    finished_normally = False

    async def hang(scope: Scope, receive: Receive, send: Send) -> None:
        cleanup.push(scope)
        started.set()
        await anyio.sleep_forever()

    app = ExitStackMiddleware(hang, tracer_provider=sdk.tracer_provider, meter_provider=sdk.meter_provider)

    async def call() -> None:
        nonlocal finished_normally
        await app(request_scope(), never_receive, discard)
        finished_normally = True

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        await started.wait()
        tg.cancel_scope.cancel()

    assert tg.cancel_scope.cancelled_caught
    assert not finished_normally
    assert cleanup.log == ["close", "release"]
    assert unwind_outcomes(sdk) == {semconv.OUTCOME_CANCELLED: 1}
    [unwind] = [span for span in sdk.spans() if span.name == semconv.SPAN_UNWIND]
    assert unwind.attributes is not None
    assert unwind.attributes[semconv.CALLBACK_COUNT] == 2
    assert unwind.attributes[semconv.CALLBACK_FAILED] == 0
    assert unwind.attributes[semconv.ERROR_TYPE] in (
        "CancelledError",
        "asyncio.exceptions.CancelledError",
        "trio.Cancelled",
    )


@pytest.mark.anyio
async def test_client_disconnect_mid_stream_runs_every_callback(sdk: Sdk) -> None:
    # Starlette's StreamingResponse (ASGI spec < 2.4) watches for http.disconnect and cancels the
    # stream through an anyio task group: the endpoint's cleanup must outlive that cancellation.
    cleanup = Cleanup()
    first_chunk_sent = anyio.Event()

    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield b"chunk\n"
            await anyio.lowlevel.checkpoint()

    async def stream(request: Request) -> StreamingResponse:
        cleanup.push(request.scope)
        return StreamingResponse(endless())

    app = ExitStackMiddleware(
        Starlette(routes=[Route("/stream", stream)]),
        tracer_provider=sdk.tracer_provider,
        meter_provider=sdk.meter_provider,
    )

    async def receive() -> Message:
        await first_chunk_sent.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            first_chunk_sent.set()

    with anyio.fail_after(10):
        await app(request_scope("/stream"), receive, send)

    assert cleanup.log == ["close", "release"]
    assert sum(unwind_outcomes(sdk).values()) == 1


@pytest.mark.anyio
async def test_client_disconnect_mid_body_runs_every_callback(sdk: Sdk) -> None:
    cleanup = Cleanup()

    async def read_body(request: Request) -> PlainTextResponse:
        cleanup.push(request.scope)
        await request.body()  # the client hangs up half-way: ClientDisconnect
        raise AssertionError("unreachable")

    app = ExitStackMiddleware(
        Starlette(routes=[Route("/", read_body, methods=["POST"])]),
        tracer_provider=sdk.tracer_provider,
        meter_provider=sdk.meter_provider,
    )
    messages: list[Message] = [
        {"type": "http.request", "body": b"first half", "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> Message:
        return messages.pop(0)

    scope = request_scope()
    scope["method"] = "POST"
    with pytest.raises(ClientDisconnect):
        await app(scope, receive, discard)
    assert cleanup.log == ["close", "release"]
    # the endpoint's failure is not the unwind's: its cleanup went fine
    assert unwind_outcomes(sdk) == {semconv.OUTCOME_OK: 1}


def test_real_client_hanging_up_mid_stream_runs_every_callback(sdk: Sdk) -> None:
    cleanup = Cleanup()

    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield b"chunk\n" * 100
            await anyio.sleep(0.001)

    async def stream(request: Request) -> StreamingResponse:
        cleanup.push(request.scope)
        return StreamingResponse(endless())

    app = ExitStackMiddleware(
        Starlette(routes=[Route("/stream", stream)]),
        tracer_provider=sdk.tracer_provider,
        meter_provider=sdk.meter_provider,
    )
    with running_server(app) as server:
        with httpx.Client(base_url=server.url()) as client, client.stream("GET", "/stream") as response:
            assert next(response.iter_bytes()).startswith(b"chunk")
        # the client has hung up; the server notices on its next write
        wait_until(lambda: len(cleanup.log) == 2, "the server to notice the hang-up and unwind")
    assert cleanup.log == ["close", "release"]
    assert sum(unwind_outcomes(sdk).values()) == 1


def test_native_asyncio_cancel_during_the_unwind_does_not_cut_a_callback_short(sdk: Sdk) -> None:
    # Task.cancel() bypasses anyio's shielded scopes; uvicorn's graceful-shutdown timeout does this.
    cleanup = Cleanup(pause=0.05)

    async def respond(scope: Scope, receive: Receive, send: Send) -> None:
        cleanup.push(scope)

    app = ExitStackMiddleware(respond, tracer_provider=sdk.tracer_provider, meter_provider=sdk.meter_provider)

    async def main() -> None:
        task = asyncio.create_task(app(request_scope(), never_receive, discard))
        await anyio.to_thread.run_sync(cleanup.unwinding.wait)
        task.cancel("first")
        await asyncio.sleep(0.01)
        task.cancel("second")
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert cleanup.log == ["close", "release"]
    # the request itself had finished; only its cleanup was interrupted (and survived it)
    assert unwind_outcomes(sdk) == {semconv.OUTCOME_OK: 1}


def test_native_asyncio_cancel_of_the_request_then_of_its_unwind(sdk: Sdk) -> None:
    cleanup = Cleanup(pause=0.05)
    started = asyncio.Event()

    async def hang(scope: Scope, receive: Receive, send: Send) -> None:
        cleanup.push(scope)
        started.set()
        await asyncio.sleep(3600)

    app = ExitStackMiddleware(hang, tracer_provider=sdk.tracer_provider, meter_provider=sdk.meter_provider)

    async def main() -> None:
        task = asyncio.create_task(app(request_scope(), never_receive, discard))
        await started.wait()
        task.cancel("request")
        await anyio.to_thread.run_sync(cleanup.unwinding.wait)
        task.cancel("unwind")
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert cleanup.log == ["close", "release"]
    assert unwind_outcomes(sdk) == {semconv.OUTCOME_CANCELLED: 1}


def test_a_suppressed_failure_does_not_swallow_a_native_cancel_of_the_unwind() -> None:
    cleanup = Cleanup(pause=0.05)

    async def fail(scope: Scope, receive: Receive, send: Send) -> None:
        stack = get_exit_stack(scope)
        stack.push(lambda *exc_details: True)  # suppresses the endpoint's failure
        cleanup.push(scope)
        raise LookupError("endpoint failed")

    app = ExitStackMiddleware(fail)

    async def main() -> None:
        task = asyncio.create_task(app(request_scope(), never_receive, discard))
        await anyio.to_thread.run_sync(cleanup.unwinding.wait)
        task.cancel("shutdown")
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert cleanup.log == ["close", "release"]


def test_uvicorn_shutdown_with_requests_in_flight_runs_their_cleanup(sdk: Sdk) -> None:
    # Past timeout_graceful_shutdown uvicorn cancels the requests' tasks (native asyncio cancel)
    # while one is still in its endpoint and another is already unwinding, then ends its event
    # loop as soon as the lifespan shutdown returns: wait_for_unwinds() there keeps it running.
    in_endpoint = Cleanup(pause=0.02)
    unwinding = Cleanup(pause=0.3)
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
    assert unwinding.log == ["close", "release"]
    outcomes = unwind_outcomes(sdk)
    assert outcomes.get(semconv.OUTCOME_CANCELLED) == 1
    assert sum(outcomes.values()) == 2
