"""callback_timeout: a hanging async callback is abandoned with outcome ``timeout`` and the unwind
goes on; sync callbacks are never interrupted; a stuck unwind shows in ``exitstack.unwind.active``."""

from __future__ import annotations

import math
import time
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from opentelemetry.trace import StatusCode
from starlette.types import Message, Receive, Scope, Send

from exitstack_otel import (
    CallbackTimeoutError,
    ExitStackMiddleware,
    InstrumentedAsyncExitStack,
    get_exit_stack,
    semconv,
)
from exitstack_otel.telemetry import Telemetry, TelemetryOptions
from tests.support.otel_helpers import Sdk

TIMEOUT_ERROR = f"{CallbackTimeoutError.__module__}.{CallbackTimeoutError.__qualname__}"


def telemetry_for(sdk: Sdk) -> Telemetry:
    telemetry = Telemetry.create(sdk.tracer_provider, sdk.meter_provider, TelemetryOptions())
    assert telemetry is not None
    return telemetry


def callback_outcomes(sdk: Sdk) -> dict[tuple[str, str], tuple[int, Any]]:
    return {
        (point.attributes[semconv.CALLBACK_NAME], point.attributes[semconv.CALLBACK_OUTCOME]): (
            point.count,
            point.attributes.get(semconv.ERROR_TYPE),
        )
        for point in sdk.points(semconv.CALLBACK_DURATION)
        if point.count
    }


async def hang_forever() -> None:
    await anyio.sleep_forever()


@pytest.mark.anyio
async def test_a_hanging_callback_is_abandoned_and_the_rest_still_run(sdk: Sdk) -> None:
    ran: list[str] = []

    async def release() -> None:
        ran.append("release")

    async def unwind() -> None:
        async with InstrumentedAsyncExitStack(
            "request", telemetry=telemetry_for(sdk), callback_timeout=0.05
        ) as stack:
            stack.push_async_callback(release)  # runs last
            stack.push_async_callback(hang_forever)
            stack.callback(ran.append, "close")  # runs first

    with pytest.raises(CallbackTimeoutError):
        await unwind()

    assert ran == ["close", "release"]
    assert callback_outcomes(sdk) == {
        ("list.append", semconv.OUTCOME_OK): (1, None),
        ("hang_forever", semconv.OUTCOME_TIMEOUT): (1, TIMEOUT_ERROR),
        (
            "test_a_hanging_callback_is_abandoned_and_the_rest_still_run.<locals>.release",
            semconv.OUTCOME_OK,
        ): (
            1,
            None,
        ),
    }
    spans = {span.name: span for span in sdk.spans()}
    timed_out = spans[f"{semconv.SPAN_CALLBACK} hang_forever"]
    assert timed_out.status.status_code is StatusCode.ERROR
    assert [event.name for event in timed_out.events] == ["exception"]
    unwind_span = spans[semconv.SPAN_UNWIND]
    assert unwind_span.attributes is not None
    assert unwind_span.attributes[semconv.CALLBACK_FAILED] == 1
    assert unwind_span.attributes[semconv.ERROR_TYPE] == TIMEOUT_ERROR


@pytest.mark.anyio
async def test_the_timeout_applies_without_any_telemetry() -> None:
    ran: list[str] = []

    async def unwind() -> None:
        async with InstrumentedAsyncExitStack(telemetry=None, callback_timeout=0.01) as stack:
            stack.callback(ran.append, "last")
            stack.push_async_callback(hang_forever)

    with pytest.raises(CallbackTimeoutError):
        await unwind()
    assert ran == ["last"]


@pytest.mark.anyio
async def test_a_later_exit_callback_sees_the_timeout_and_may_suppress_it() -> None:
    seen: list[type[BaseException] | None] = []

    def suppress(exc_type: type[BaseException] | None, *rest: object) -> bool:
        seen.append(exc_type)
        return True

    async with InstrumentedAsyncExitStack(telemetry=None, callback_timeout=0.01) as stack:
        stack.push(suppress)
        stack.push_async_callback(hang_forever)
    assert seen == [CallbackTimeoutError]


@pytest.mark.anyio
async def test_sync_callbacks_are_never_interrupted(sdk: Sdk) -> None:
    finished: list[bool] = []

    def slow_close() -> None:
        # real time, 50 times the timeout: a sync callback blocks the loop, nothing can interrupt it,
        # and it must not be reported as timed out
        time.sleep(0.05)
        finished.append(True)

    async with InstrumentedAsyncExitStack(telemetry=telemetry_for(sdk), callback_timeout=0.001) as stack:
        stack.callback(slow_close)
    assert finished == [True]
    outcomes = callback_outcomes(sdk)
    assert list(outcomes) == [
        ("test_sync_callbacks_are_never_interrupted.<locals>.slow_close", semconv.OUTCOME_OK)
    ]


@pytest.mark.anyio
async def test_an_outer_cancellation_stays_a_cancellation(sdk: Sdk) -> None:
    started = anyio.Event()

    async def wait() -> None:
        started.set()
        await anyio.sleep_forever()

    async def unwind() -> None:
        async with InstrumentedAsyncExitStack(telemetry=telemetry_for(sdk), callback_timeout=3600) as stack:
            stack.push_async_callback(wait)

    async with anyio.create_task_group() as tg:
        tg.start_soon(unwind)
        await started.wait()
        tg.cancel_scope.cancel()

    [(_, outcome)] = callback_outcomes(sdk)
    assert outcome == semconv.OUTCOME_CANCELLED


@pytest.mark.anyio
async def test_a_timeout_leaves_the_callback_list_as_contextlib_has_it() -> None:
    async def pause() -> None:
        await anyio.lowlevel.checkpoint()

    async with InstrumentedAsyncExitStack(telemetry=None, callback_timeout=5) as stack:
        stack.push_async_callback(pause)
        [(is_sync, wrapper)] = stack._exit_callbacks
        assert not is_sync
        # contextlib's own wrapper, nothing of ours
        assert wrapper.__wrapped__ is pause  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_through_the_middleware_the_response_is_sent_before_the_timeout_is_raised(sdk: Sdk) -> None:
    sent: list[Message] = []
    closed: list[bool] = []

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        stack = get_exit_stack(scope)
        stack.callback(closed.append, True)
        stack.push_async_callback(hang_forever)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    app = ExitStackMiddleware(
        endpoint,
        tracer_provider=sdk.tracer_provider,
        meter_provider=sdk.meter_provider,
        callback_timeout=0.02,
    )
    with pytest.raises(CallbackTimeoutError):
        await app({"type": "http", "method": "GET", "path": "/", "headers": []}, receive, send)
    assert [message["type"] for message in sent] == ["http.response.start", "http.response.body"]
    assert closed == [True]
    assert ("hang_forever", semconv.OUTCOME_TIMEOUT) in callback_outcomes(sdk)


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, "5", True])
def test_a_bad_timeout_is_refused_up_front(bad: Any) -> None:
    with pytest.raises(ValueError, match="callback_timeout"):
        InstrumentedAsyncExitStack(callback_timeout=bad)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        pass

    with pytest.raises(ValueError, match="callback_timeout"):
        ExitStackMiddleware(app, callback_timeout=bad)


def active_unwinds(sdk: Sdk) -> int:
    return sum(point.value for point in sdk.points(semconv.UNWIND_ACTIVE))


@pytest.mark.anyio
async def test_an_unwind_that_never_finishes_shows_as_active(sdk: Sdk) -> None:
    stuck = anyio.Event()
    release = anyio.Event()

    async def wait_for_release() -> None:
        stuck.set()
        await release.wait()

    async def unwind() -> None:
        async with InstrumentedAsyncExitStack("stuck", telemetry=telemetry_for(sdk)) as stack:
            stack.push_async_callback(wait_for_release)

    assert active_unwinds(sdk) == 0
    async with anyio.create_task_group() as tg:
        tg.start_soon(unwind)
        await stuck.wait()
        assert active_unwinds(sdk) == 1
        release.set()
    assert active_unwinds(sdk) == 0
