"""A cancel scope's cancellation never skips a cleanup: every pushed callback runs to its end, the
unwind records ``cancelled``, and the cancellation propagates once the stack is empty. asyncio's own
``Task.cancel()`` interrupts the callback running at that moment, as with contextlib, and the rest
run. In process, on both backends; tests/integration/test_shield_cancellation_uvicorn.py has a
real client hanging up and a real server shutting down."""

from __future__ import annotations

import asyncio

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from exitstack_otel import ExitStackMiddleware, get_exit_stack, semconv
from tests.support.asgi import discard, http_scope, never_receive
from tests.support.cleanups import Cleanup, endless_stream_app, unwind_outcomes
from tests.support.otel_helpers import Sdk

pytestmark = [
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]


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
        await app(http_scope(), never_receive, discard)
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

    app = endless_stream_app(cleanup, sdk, b"chunk\n")

    async def receive() -> Message:
        await first_chunk_sent.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            first_chunk_sent.set()

    with anyio.fail_after(10):
        await app(http_scope("/stream"), receive, send)

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

    scope = http_scope()
    scope["method"] = "POST"
    with pytest.raises(ClientDisconnect):
        await app(scope, receive, discard)
    assert cleanup.log == ["close", "release"]
    # the endpoint's failure is not the unwind's: its cleanup went fine
    assert unwind_outcomes(sdk) == {semconv.OUTCOME_OK: 1}


@pytest.mark.parametrize("enclosed", [False, True], ids=["plain-task", "in-an-anyio-scope"])
def test_native_asyncio_cancel_during_the_unwind_interrupts_only_the_running_callback(
    sdk: Sdk, enclosed: bool
) -> None:
    # Task.cancel() passes every cancel scope (uvicorn's graceful-shutdown timeout does this): as
    # with contextlib, the callback awaiting at that moment gets the CancelledError, and the ones
    # after it run with it pending, an awaiting one included (asyncio delivers one cancellation once)
    log: list[object] = []
    started = asyncio.Event()

    async def interrupted() -> None:
        started.set()
        await asyncio.sleep(3600)
        log.append("never")

    async def after(exc_type: type[BaseException] | None, *details: object) -> None:
        await asyncio.sleep(0)
        log.append(("after", exc_type))

    async def respond(scope: Scope, receive: Receive, send: Send) -> None:
        stack = get_exit_stack(scope)
        stack.push_async_exit(after)
        stack.push_async_callback(interrupted)
        stack.callback(log.append, "first")

    app = ExitStackMiddleware(respond, tracer_provider=sdk.tracer_provider, meter_provider=sdk.meter_provider)

    async def request() -> None:
        if enclosed:  # the unwind is shielded from the scope, not from the task's own cancel()
            with anyio.CancelScope():
                await app(http_scope(), never_receive, discard)
        else:
            await app(http_scope(), never_receive, discard)

    async def main() -> None:
        task = asyncio.create_task(request())
        await started.wait()
        task.cancel("shutdown")
        with pytest.raises(asyncio.CancelledError, match="shutdown"):
            await task

    asyncio.run(main())
    assert log == ["first", ("after", asyncio.CancelledError)]
    assert unwind_outcomes(sdk) == {semconv.OUTCOME_CANCELLED: 1}
    outcomes = sorted(
        str(point.attributes[semconv.CALLBACK_OUTCOME])
        for point in sdk.points(semconv.CALLBACK_DURATION)
        for _ in range(point.count)
    )
    assert outcomes == [semconv.OUTCOME_CANCELLED, semconv.OUTCOME_OK, semconv.OUTCOME_OK]


def test_native_asyncio_cancel_of_the_request_then_of_its_unwind(sdk: Sdk) -> None:
    cleanup = Cleanup()
    started = asyncio.Event()

    async def hang(scope: Scope, receive: Receive, send: Send) -> None:
        get_exit_stack(scope).callback(cleanup.log.append, "last")
        cleanup.push(scope)
        started.set()
        await asyncio.sleep(3600)  # until cancelled

    app = ExitStackMiddleware(hang, tracer_provider=sdk.tracer_provider, meter_provider=sdk.meter_provider)

    async def main() -> None:
        go_on = asyncio.Event()
        cleanup.go_on = go_on.wait  # never set: only the second cancellation ends that wait
        task = asyncio.create_task(app(http_scope(), never_receive, discard))
        await started.wait()
        task.cancel("request")
        await anyio.to_thread.run_sync(cleanup.unwinding.wait)
        task.cancel("unwind")
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    # release was interrupted in its wait; the callback pushed before it still ran
    assert cleanup.log == ["close", "last"]
    assert unwind_outcomes(sdk) == {semconv.OUTCOME_CANCELLED: 1}
