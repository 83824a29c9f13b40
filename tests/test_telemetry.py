"""Spans and metrics exactly as docs/telemetry.md describes them."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind, StatusCode

from exitstack_otel import semconv
from exitstack_otel.asgi import http_route, request_method
from exitstack_otel.stack import InstrumentedAsyncExitStack
from exitstack_otel.telemetry import error_type
from exitstack_otel.version import __version__
from tests.support.clock import SteppedClock
from tests.support.otel_helpers import Sdk, attrs, histogram_points, number_points

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan


class Pool:
    def __init__(self) -> None:
        self.released: list[str] = []

    def release(self, connection: str) -> None:
        self.released.append(connection)

    async def broken_release(self, connection: str) -> None:
        raise ConnectionError(f"cannot release {connection}")


def _parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def _callback_spans(sdk: Sdk) -> list[ReadableSpan]:
    return [span for span in sdk.spans() if span.name.startswith(semconv.SPAN_CALLBACK + " ")]


async def _request_with_ok_and_failing_callback(sdk: Sdk, **options: Any) -> trace.Span:
    telemetry = sdk.telemetry(**options)
    pool = Pool()
    tracer = sdk.tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("request") as request_span:
        stack = InstrumentedAsyncExitStack("fastapi_middleware_astack", telemetry=telemetry)

    # the unwind's parent is the span current at creation, not the one current at exit
    async def unwind() -> None:
        async with stack:
            stack.callback(pool.release, "connection-secret-7")
            stack.push_async_callback(pool.broken_release, "connection-secret-8")

    with tracer.start_as_current_span("elsewhere"), pytest.raises(ConnectionError):
        await unwind()
    assert pool.released == ["connection-secret-7"]
    return request_span


@pytest.mark.anyio
async def test_problems_mode_spans(sdk: Sdk) -> None:
    request_span = await _request_with_ok_and_failing_callback(sdk)
    (unwind,) = sdk.spans_named(semconv.SPAN_UNWIND)
    assert unwind.kind is SpanKind.INTERNAL
    assert _parent_id(unwind) == request_span.get_span_context().span_id
    assert unwind.instrumentation_scope is not None
    assert (unwind.instrumentation_scope.name, unwind.instrumentation_scope.version) == (
        semconv.SCOPE_NAME,
        __version__,
    )
    assert dict(unwind.attributes or {}) == {
        semconv.STACK_NAME: "fastapi_middleware_astack",
        semconv.CALLBACK_COUNT: 2,
        semconv.CALLBACK_FAILED: 1,
        semconv.ERROR_TYPE: "ConnectionError",
    }
    assert unwind.status.status_code is StatusCode.ERROR
    # only the failed callback gets a span by default
    (failed,) = _callback_spans(sdk)
    assert failed.name == f"{semconv.SPAN_CALLBACK} Pool.broken_release"
    assert failed.kind is SpanKind.INTERNAL
    assert _parent_id(failed) == unwind.context.span_id
    assert dict(failed.attributes or {}) == {
        semconv.STACK_NAME: "fastapi_middleware_astack",
        semconv.CALLBACK_NAME: "Pool.broken_release",
        semconv.CALLBACK_KIND: semconv.KIND_ASYNC_CALLBACK,
        semconv.CALLBACK_OUTCOME: semconv.OUTCOME_ERROR,
        semconv.ERROR_TYPE: "ConnectionError",
    }
    assert failed.status.status_code is StatusCode.ERROR
    assert [event.name for event in failed.events] == ["exception"]
    assert unwind.start_time is not None
    assert failed.start_time is not None
    assert unwind.end_time is not None
    assert failed.end_time is not None
    assert unwind.start_time <= failed.start_time <= failed.end_time <= unwind.end_time
    # no argument value reaches any attribute
    assert "secret" not in repr([dict(span.attributes or {}) for span in sdk.spans()])


@pytest.mark.anyio
async def test_all_mode_records_every_push_of_known_code_too(sdk: Sdk) -> None:
    telemetry = sdk.telemetry(callback_spans="all")

    def cleanup() -> None:
        pass

    with sdk.tracer_provider.get_tracer("test").start_as_current_span("request"):
        for depth in (1, 2):
            async with InstrumentedAsyncExitStack("s", telemetry=telemetry) as stack:
                for _ in range(depth):  # the second stack's pushes are all of code seen before
                    stack.callback(cleanup)
    assert len(telemetry.infos_by_code) == 1
    (request,) = sdk.spans_named("request")
    assert [dict(event.attributes or {})[semconv.STACK_DEPTH] for event in request.events] == [1, 1, 2]
    (pushed,) = number_points(sdk.metrics()[semconv.CALLBACK_PUSHED])
    assert pushed.value == 3


@pytest.mark.anyio
async def test_all_mode_spans_every_callback_and_records_pushes(sdk: Sdk) -> None:
    request_span = await _request_with_ok_and_failing_callback(sdk, callback_spans="all")
    (unwind,) = sdk.spans_named(semconv.SPAN_UNWIND)
    spans = _callback_spans(sdk)
    # LIFO: the async callback ran (and ended) first
    assert [span.name for span in spans] == [
        f"{semconv.SPAN_CALLBACK} Pool.broken_release",
        f"{semconv.SPAN_CALLBACK} Pool.release",
    ]
    assert {_parent_id(span) for span in spans} == {unwind.context.span_id}
    ok = spans[1]
    assert dict(ok.attributes or {}) == {
        semconv.STACK_NAME: "fastapi_middleware_astack",
        semconv.CALLBACK_NAME: "Pool.release",
        semconv.CALLBACK_KIND: semconv.KIND_CALLBACK,
        semconv.CALLBACK_OUTCOME: semconv.OUTCOME_OK,
    }
    assert ok.status.status_code is StatusCode.UNSET
    # pushes happened while "elsewhere" was current: the events are there
    (elsewhere,) = sdk.spans_named("elsewhere")
    assert [(event.name, dict(event.attributes or {})) for event in elsewhere.events] == [
        (
            semconv.EVENT_PUSH,
            {
                semconv.CALLBACK_NAME: "Pool.release",
                semconv.CALLBACK_KIND: semconv.KIND_CALLBACK,
                semconv.STACK_DEPTH: 1,
            },
        ),
        (
            semconv.EVENT_PUSH,
            {
                semconv.CALLBACK_NAME: "Pool.broken_release",
                semconv.CALLBACK_KIND: semconv.KIND_ASYNC_CALLBACK,
                semconv.STACK_DEPTH: 2,
            },
        ),
    ]
    assert _parent_id(unwind) == request_span.get_span_context().span_id


@pytest.mark.anyio
async def test_problems_mode_records_slow_callbacks(sdk: Sdk, stepped_clock: SteppedClock) -> None:
    telemetry = sdk.telemetry(slow_callback_threshold=0.01)

    async def flush() -> None:
        await anyio.lowlevel.checkpoint()
        stepped_clock.advance(0.02)  # over the threshold, without waiting

    async with InstrumentedAsyncExitStack("s", telemetry=telemetry) as stack:
        stack.push_async_callback(flush)
        stack.callback(print, end="")  # 0 s by the stack's clock, however busy the machine
    (slow,) = _callback_spans(sdk)
    assert slow.name == f"{semconv.SPAN_CALLBACK} {flush.__qualname__}"
    assert slow.attributes is not None
    assert slow.attributes[semconv.CALLBACK_OUTCOME] == semconv.OUTCOME_OK
    assert slow.status.status_code is StatusCode.UNSET


@pytest.mark.anyio
async def test_spans_made_by_callbacks_nest_under_the_unwind(sdk: Sdk) -> None:
    tracer = sdk.tracer_provider.get_tracer("test")

    def close_with_span() -> None:
        with tracer.start_as_current_span("inner"):
            pass

    # "all" keeps a live unwind span; "problems" makes it afterwards, and only if there was a problem
    async with InstrumentedAsyncExitStack("s", telemetry=sdk.telemetry(callback_spans="all")) as stack:
        stack.callback(close_with_span)
    (unwind,) = sdk.spans_named(semconv.SPAN_UNWIND)
    (inner,) = sdk.spans_named("inner")
    assert _parent_id(inner) == unwind.context.span_id
    assert unwind.parent is None  # no span was current when the stack was made


@pytest.mark.anyio
async def test_problems_mode_makes_no_span_for_an_unwind_that_went_well(
    sdk: Sdk, stepped_clock: SteppedClock
) -> None:
    # stepped_clock: every callback takes 0 s, below the default threshold on any machine
    tracer = sdk.tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("request"):
        async with InstrumentedAsyncExitStack("s", telemetry=sdk.telemetry()) as stack:
            stack.callback(print, end="")
            stack.push_async_callback(anyio.sleep, 0)
    assert [span.name for span in sdk.spans()] == ["request"]
    points = histogram_points(sdk.metrics()[semconv.CALLBACK_DURATION])
    assert sorted((attrs(point)[semconv.CALLBACK_KIND], point.count) for point in points) == [
        (semconv.KIND_ASYNC_CALLBACK, 1),
        (semconv.KIND_CALLBACK, 1),
    ]


@pytest.mark.anyio
async def test_cancelled_callback(sdk: Sdk) -> None:
    telemetry = sdk.telemetry()
    with anyio.CancelScope() as cancel_scope:
        async with InstrumentedAsyncExitStack("s", telemetry=telemetry) as stack:
            stack.push_async_callback(anyio.sleep, 30)
            cancel_scope.cancel()
    assert cancel_scope.cancelled_caught
    (cancelled,) = _callback_spans(sdk)
    assert cancelled.attributes is not None
    assert cancelled.attributes[semconv.CALLBACK_OUTCOME] == semconv.OUTCOME_CANCELLED
    assert cancelled.attributes[semconv.ERROR_TYPE] in ("asyncio.exceptions.CancelledError", "trio.Cancelled")
    duration = sdk.metrics()[semconv.UNWIND_DURATION]
    (point,) = histogram_points(duration)
    assert attrs(point)[semconv.UNWIND_OUTCOME] == semconv.OUTCOME_CANCELLED


@pytest.mark.anyio
async def test_metrics(sdk: Sdk) -> None:
    telemetry = sdk.telemetry()
    route = type("Route", (), {"path": "/items/{item_id}"})()
    scope = {"type": "http", "method": "GET", "path": "/items/secret-42", "route": route}
    pool = Pool()
    active_during_unwind: list[int] = []

    def read_active() -> None:
        active = sdk.metrics()[semconv.UNWIND_ACTIVE]
        active_during_unwind.extend(int(point.value) for point in number_points(active))

    for _ in range(2):
        async with InstrumentedAsyncExitStack("fastapi_middleware_astack", telemetry=telemetry) as stack:
            stack.route, stack.method = http_route(scope), request_method(scope)
            stack.callback(read_active)
            stack.callback(pool.release, "a")
            stack.callback(functools.partial(pool.release, "b"))

    async def failing_unwind() -> None:
        async with InstrumentedAsyncExitStack("s", telemetry=telemetry) as stack:
            stack.push_async_callback(pool.broken_release, "c")

    with pytest.raises(ConnectionError):
        await failing_unwind()
    assert active_during_unwind == [1, 1]

    found = sdk.metrics()
    assert set(found) == set(semconv.METRICS)
    assert {name: metric.unit for name, metric in found.items()} == {
        semconv.CALLBACK_PUSHED: semconv.UNIT_CALLBACK,
        semconv.CALLBACK_DURATION: semconv.UNIT_SECONDS,
        semconv.UNWIND_DURATION: semconv.UNIT_SECONDS,
        semconv.UNWIND_CALLBACKS: semconv.UNIT_CALLBACK,
        semconv.UNWIND_ACTIVE: semconv.UNIT_UNWIND,
    }

    pushed = {
        frozenset(attrs(point).items()): point.value
        for point in number_points(found[semconv.CALLBACK_PUSHED])
    }
    request = {semconv.STACK_NAME: "fastapi_middleware_astack"}
    assert pushed == {
        frozenset(
            {
                **request,
                semconv.CALLBACK_NAME: "test_metrics.<locals>.read_active",
                semconv.CALLBACK_KIND: "callback",
            }.items()
        ): 2,
        frozenset(
            {**request, semconv.CALLBACK_NAME: "Pool.release", semconv.CALLBACK_KIND: "callback"}.items()
        ): 4,
        frozenset(
            {
                semconv.STACK_NAME: "s",
                semconv.CALLBACK_NAME: "Pool.broken_release",
                semconv.CALLBACK_KIND: "async_callback",
            }.items()
        ): 1,
    }

    durations = histogram_points(found[semconv.CALLBACK_DURATION])
    assert {point.explicit_bounds for point in durations} == {semconv.DURATION_BUCKETS}
    counts = {frozenset(attrs(point).items()): point.count for point in durations}
    assert counts == {
        frozenset(
            {
                **request,
                semconv.CALLBACK_NAME: "test_metrics.<locals>.read_active",
                semconv.CALLBACK_KIND: "callback",
                semconv.CALLBACK_OUTCOME: "ok",
            }.items()
        ): 2,
        frozenset(
            {
                **request,
                semconv.CALLBACK_NAME: "Pool.release",
                semconv.CALLBACK_KIND: "callback",
                semconv.CALLBACK_OUTCOME: "ok",
            }.items()
        ): 4,
        frozenset(
            {
                semconv.STACK_NAME: "s",
                semconv.CALLBACK_NAME: "Pool.broken_release",
                semconv.CALLBACK_KIND: "async_callback",
                semconv.CALLBACK_OUTCOME: "error",
                semconv.ERROR_TYPE: "ConnectionError",
            }.items()
        ): 1,
    }

    unwinds = histogram_points(found[semconv.UNWIND_DURATION])
    assert {point.explicit_bounds for point in unwinds} == {semconv.DURATION_BUCKETS}
    assert {frozenset(attrs(point).items()): point.count for point in unwinds} == {
        frozenset(
            {
                **request,
                semconv.HTTP_ROUTE: "/items/{item_id}",
                semconv.HTTP_REQUEST_METHOD: "GET",
                semconv.UNWIND_OUTCOME: "ok",
            }.items()
        ): 2,
        frozenset({semconv.STACK_NAME: "s", semconv.UNWIND_OUTCOME: "error"}.items()): 1,
    }

    per_unwind = histogram_points(found[semconv.UNWIND_CALLBACKS])
    assert {point.explicit_bounds for point in per_unwind} == {semconv.CALLBACK_COUNT_BUCKETS}
    assert {frozenset(attrs(point).items()): (point.count, point.sum) for point in per_unwind} == {
        frozenset({**request, semconv.HTTP_ROUTE: "/items/{item_id}"}.items()): (2, 6),
        frozenset({semconv.STACK_NAME: "s"}.items()): (1, 1),
    }

    assert {
        frozenset(attrs(point).items()): point.value for point in number_points(found[semconv.UNWIND_ACTIVE])
    } == {
        frozenset(request.items()): 0,
        frozenset({semconv.STACK_NAME: "s"}.items()): 0,
    }
    assert "secret" not in repr(found)


@pytest.mark.anyio
async def test_callback_names_beyond_the_cap_are_other(sdk: Sdk) -> None:
    telemetry = sdk.telemetry(callback_spans="all", max_callback_names=2)
    async with InstrumentedAsyncExitStack("s", telemetry=telemetry) as stack:
        for function in (print, repr, sorted, print):
            stack.callback(function, [])
    names = [span.name.removeprefix(semconv.SPAN_CALLBACK + " ") for span in _callback_spans(sdk)]
    assert names == ["print", semconv.OTHER_NAME, "repr", "print"]


def test_error_type_is_qualified_unless_builtin() -> None:
    assert error_type(ValueError()) == "ValueError"
    assert error_type(anyio.BrokenResourceError()) == "anyio.BrokenResourceError"


@pytest.mark.anyio
async def test_unsampled_requests_still_get_metrics() -> None:
    sdk = Sdk(tracer_provider=TracerProvider(sampler=ALWAYS_OFF))
    try:
        with pytest.raises(ConnectionError):
            async with InstrumentedAsyncExitStack(
                "s", telemetry=sdk.telemetry(callback_spans="all")
            ) as stack:
                stack.push_async_callback(Pool().broken_release, "c")
        assert sdk.spans() == ()
        (point,) = histogram_points(sdk.metrics()[semconv.CALLBACK_DURATION])
        assert attrs(point)[semconv.CALLBACK_OUTCOME] == semconv.OUTCOME_ERROR
    finally:
        sdk.shutdown()
