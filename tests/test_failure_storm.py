"""A failure storm (every request's cleanup failing the same way): every failure counted in the
metrics, the first ones of each kind traced and logged in full, the rest through the fast path."""

from __future__ import annotations

import contextlib
import gc
import logging
import weakref
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import pytest
from opentelemetry.trace import StatusCode

from exitstack_otel import semconv
from exitstack_otel.failure_budget import BURST, INTERVAL_SECONDS, Budget
from exitstack_otel.stack import InstrumentedAsyncExitStack
from exitstack_otel.telemetry import Telemetry, TelemetryOptions
from tests.support.otel_helpers import Sdk, attrs, histogram_points

if TYPE_CHECKING:
    from tests.support.clock import SteppedClock


class DatabaseDown(ConnectionError):
    pass


class ConnectionPool:
    """The cleanup of a request while its database is down: the release fails every time."""

    def __init__(self) -> None:
        self.raised: list[weakref.ref[BaseException]] = []

    def close_cursor(self) -> None:
        pass

    async def release(self) -> None:
        exc = DatabaseDown("connection refused")
        self.raised.append(weakref.ref(exc))
        raise exc

    async def release_timing_out(self) -> None:
        raise TimeoutError("pool timed out")


async def _request(telemetry: Telemetry, pool: ConnectionPool) -> None:
    """The unwind of a request's three callbacks, the middle one failing."""
    stack = InstrumentedAsyncExitStack("s", telemetry=telemetry)
    stack.route, stack.method = "/items", "GET"
    async with stack:
        stack.callback(pool.close_cursor)
        stack.push_async_callback(pool.release)
        stack.callback(pool.close_cursor)


async def _storm(telemetry: Telemetry, pool: ConnectionPool, requests: int) -> None:
    for _ in range(requests):
        with pytest.raises(DatabaseDown):
            await _request(telemetry, pool)


def _failed_spans(sdk: Sdk) -> list[Any]:
    return [
        span
        for span in sdk.spans()
        if span.name == f"{semconv.SPAN_CALLBACK} {ConnectionPool.release.__qualname__}"
    ]


def _counts(sdk: Sdk, metric: str) -> dict[tuple[tuple[str, Any], ...], int]:
    return {
        tuple(sorted(attrs(point).items())): point.count for point in histogram_points(sdk.metrics()[metric])
    }


def test_a_budget_allows_a_burst_then_one_an_interval() -> None:
    budget = Budget(burst=3, interval=1.0)
    assert [budget.take(100.0) for _ in range(5)] == [True, True, True, False, False]
    assert not budget.take(100.9)
    assert budget.take(101.0)
    assert not budget.take(101.5)
    assert budget.take(102.0)


def test_a_budget_refills_while_the_failures_stop() -> None:
    budget = Budget(burst=3, interval=1.0)
    assert all(budget.take(0.0) for _ in range(3))
    assert not budget.take(0.0)
    # three intervals of quiet bring the whole burst back, and no more than that
    assert [budget.take(10.0) for _ in range(4)] == [True, True, True, False]


@pytest.mark.anyio
async def test_a_storm_is_counted_exactly_and_traced_for_its_first_failures(
    sdk: Sdk, stepped_clock: SteppedClock
) -> None:
    # the stepped clock stands still: the whole storm happens in one instant
    requests = BURST + 15
    telemetry = sdk.telemetry()
    pool = ConnectionPool()
    await _storm(telemetry, pool, requests)

    failed = _failed_spans(sdk)
    assert len(failed) == BURST
    # the exemplars a person clicks on lead to the traced failures, and only to those (read first:
    # a collection hands each exemplar out once)
    (point,) = (
        point
        for point in histogram_points(sdk.metrics()[semconv.CALLBACK_DURATION])
        if attrs(point).get(semconv.CALLBACK_OUTCOME) == semconv.OUTCOME_ERROR
    )
    assert point.exemplars
    assert {exemplar.span_id for exemplar in point.exemplars} <= {span.context.span_id for span in failed}
    for span in failed:
        assert span.status.status_code is StatusCode.ERROR
        (event,) = span.events
        assert event.name == "exception"
        assert event.attributes is not None
        assert event.attributes["exception.type"].endswith("DatabaseDown")
        assert "connection refused" in str(event.attributes["exception.stacktrace"])
    unwinds = sdk.spans_named(semconv.SPAN_UNWIND)
    assert len(unwinds) == BURST
    assert len(sdk.spans()) == 2 * BURST  # the callbacks that went well have no span, as ever

    base = {semconv.STACK_NAME: "s"}
    release = {
        **base,
        semconv.CALLBACK_NAME: ConnectionPool.release.__qualname__,
        semconv.CALLBACK_KIND: semconv.KIND_ASYNC_CALLBACK,
    }
    close = {
        **base,
        semconv.CALLBACK_NAME: ConnectionPool.close_cursor.__qualname__,
        semconv.CALLBACK_KIND: semconv.KIND_CALLBACK,
    }
    error = {semconv.CALLBACK_OUTCOME: semconv.OUTCOME_ERROR, semconv.ERROR_TYPE: f"{__name__}.DatabaseDown"}
    assert _counts(sdk, semconv.CALLBACK_DURATION) == {
        tuple(sorted({**release, **error}.items())): requests,
        tuple(sorted({**close, semconv.CALLBACK_OUTCOME: semconv.OUTCOME_OK}.items())): 2 * requests,
    }
    route = {**base, semconv.HTTP_ROUTE: "/items"}
    assert _counts(sdk, semconv.UNWIND_DURATION) == {
        tuple(
            sorted(
                {
                    **route,
                    semconv.HTTP_REQUEST_METHOD: "GET",
                    semconv.UNWIND_OUTCOME: semconv.OUTCOME_ERROR,
                }.items()
            )
        ): requests
    }
    assert _counts(sdk, semconv.UNWIND_CALLBACKS) == {tuple(sorted(route.items())): requests}

    # a second later the budget lets one more through
    stepped_clock.advance(INTERVAL_SECONDS)
    await _storm(telemetry, pool, 3)
    assert len(_failed_spans(sdk)) == BURST + 1


@pytest.mark.anyio
async def test_another_kind_of_failure_is_traced_in_the_middle_of_a_storm(
    sdk: Sdk, stepped_clock: SteppedClock
) -> None:
    telemetry = sdk.telemetry()
    pool = ConnectionPool()
    await _storm(telemetry, pool, BURST + 5)
    with pytest.raises(TimeoutError):
        async with InstrumentedAsyncExitStack("s", telemetry=telemetry) as stack:
            stack.push_async_callback(pool.release_timing_out)
    (timed_out,) = (span for span in sdk.spans() if "release_timing_out" in span.name)
    assert timed_out.attributes is not None
    assert timed_out.attributes[semconv.ERROR_TYPE] == "TimeoutError"
    # and the storm goes on as quietly as before
    await _storm(telemetry, pool, 5)
    assert len(_failed_spans(sdk)) == BURST


@pytest.mark.anyio
async def test_a_failure_beyond_its_budget_is_traced_with_a_slow_callback_of_its_unwind(
    sdk: Sdk, stepped_clock: SteppedClock
) -> None:
    telemetry = sdk.telemetry(slow_callback_threshold=0.01)
    pool = ConnectionPool()
    await _storm(telemetry, pool, BURST)

    async def slow_flush() -> None:
        await anyio.lowlevel.checkpoint()
        stepped_clock.advance(0.02)

    async def slow_and_failing() -> None:
        async with InstrumentedAsyncExitStack("s", telemetry=telemetry) as stack:
            stack.push_async_callback(slow_flush)
            stack.push_async_callback(pool.release)

    # a trace is whole or absent: the slow callback's unwind shows its failure too
    with pytest.raises(DatabaseDown):
        await slow_and_failing()
    assert len(_failed_spans(sdk)) == BURST + 1
    (unwind,) = [
        span
        for span in sdk.spans_named(semconv.SPAN_UNWIND)
        if span.attributes and span.attributes[semconv.CALLBACK_COUNT] == 2
    ]
    assert unwind.attributes is not None
    assert unwind.attributes[semconv.CALLBACK_FAILED] == 1


@pytest.mark.anyio
async def test_a_suppressed_failure_beyond_its_budget_leaves_an_unwind_that_went_well(
    sdk: Sdk, stepped_clock: SteppedClock
) -> None:
    telemetry = sdk.telemetry()
    pool = ConnectionPool()
    await _storm(telemetry, pool, BURST)
    async with InstrumentedAsyncExitStack("s", telemetry=telemetry) as stack:
        stack.push(lambda *exc_info: True)  # suppresses what the release raises
        stack.push_async_callback(pool.release)
    assert len(sdk.spans_named(semconv.SPAN_UNWIND)) == BURST
    outcomes = {
        attrs(point)[semconv.UNWIND_OUTCOME]: point.count
        for point in histogram_points(sdk.metrics()[semconv.UNWIND_DURATION])
    }
    assert outcomes == {semconv.OUTCOME_ERROR: BURST, semconv.OUTCOME_OK: 1}


@pytest.mark.anyio
async def test_the_log_records_the_traced_failures_and_counts_the_rest_as_left_out(
    sdk: Sdk, stepped_clock: SteppedClock, caplog: pytest.LogCaptureFixture
) -> None:
    telemetry = sdk.telemetry()
    with caplog.at_level(logging.WARNING, logger="exitstack_otel"):
        await _storm(telemetry, ConnectionPool(), BURST + 7)
        telemetry.failures.flush()
    records = [record for record in caplog.records if record.name.startswith("exitstack_otel")]
    errors = [record for record in records if record.levelno == logging.ERROR]
    assert len(errors) == BURST
    assert all(record.exc_info is not None for record in errors)
    (summary,) = [record for record in records if record.levelno == logging.WARNING]
    assert summary.exitstack_left_out == 7  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_without_a_tracer_the_budget_still_spares_the_log(
    stepped_clock: SteppedClock, caplog: pytest.LogCaptureFixture
) -> None:
    sdk = Sdk()
    try:
        telemetry = Telemetry(None, sdk.telemetry().instruments, TelemetryOptions())
        with caplog.at_level(logging.ERROR, logger="exitstack_otel"):
            await _storm(telemetry, ConnectionPool(), BURST + 4)
        assert len([record for record in caplog.records if record.name.startswith("exitstack_otel")]) == BURST
        points = histogram_points(sdk.metrics()[semconv.CALLBACK_DURATION])
        assert (
            sum(
                point.count
                for point in points
                if attrs(point)[semconv.CALLBACK_OUTCOME] == semconv.OUTCOME_ERROR
            )
            == BURST + 4
        )
    finally:
        sdk.shutdown()


@pytest.mark.anyio
async def test_a_storm_keeps_nothing_of_the_failures_it_left_out(
    sdk: Sdk, stepped_clock: SteppedClock
) -> None:
    telemetry = sdk.telemetry()
    pool = ConnectionPool()
    await _storm(telemetry, pool, BURST)  # the traced ones, whose log records may keep theirs
    pool.raised.clear()
    await _storm(telemetry, pool, 50)
    gc.collect()
    assert [ref for ref in pool.raised if ref() is not None] == []
    assert len(telemetry.failure_kinds) == 1


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_long_storm_grows_nothing(sdk: Sdk, monkeypatch: pytest.MonkeyPatch) -> None:
    # the real clock: a failure traced every second of it, as in production. The records of the
    # traced ones would stay in pytest's log capture, with their tracebacks: not ours to keep.
    logger = logging.getLogger("exitstack_otel")
    monkeypatch.setattr(logger, "propagate", False)
    monkeypatch.setattr(logger, "handlers", [logging.NullHandler()])
    telemetry = sdk.telemetry()
    pool = ConnectionPool()
    chunk, chunks = 25_000, 4
    live: list[int] = []
    traced = 0
    for _ in range(chunks):
        for _ in range(chunk):
            with contextlib.suppress(DatabaseDown):
                await _request(telemetry, pool)
        pool.raised.clear()
        traced += len(sdk.spans())
        sdk.spans_exporter.clear()  # the exporter's own keeping is not ours
        sdk.metrics()  # a collection now and then, as a reader's
        gc.collect()
        live.append(len(gc.get_objects()))
    print(f"\nfailure storm: live objects after each {chunk} requests: {live}; spans {traced}")
    assert live[-1] - live[0] < 200
    assert len(telemetry.failure_kinds) == 1
    assert telemetry.failures.unlogged <= chunk * chunks
    points = histogram_points(sdk.metrics()[semconv.UNWIND_DURATION])
    assert sum(point.count for point in points) == chunk * chunks
