"""Telemetry trouble never changes what the stack does: broken providers, a raising namer."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, NoReturn

import httpx
import pytest
from opentelemetry import metrics, trace
from opentelemetry.metrics import NoOpHistogram, NoOpMeter

from exitstack_otel import semconv
from exitstack_otel import stack as stack_module
from exitstack_otel.providers import TelemetrySource
from exitstack_otel.stack import InstrumentedAsyncExitStack
from exitstack_otel.telemetry import Telemetry, TelemetryOptions
from tests.support.cleanup_app import CleanupFailed, make_app
from tests.support.otel_helpers import Sdk, number_points
from tests.support.stack_scenarios import Push, Scenario, run

if TYPE_CHECKING:
    pass


class TelemetryBroke(Exception):
    pass


def _broken(*args: object, **kwargs: object) -> NoReturn:
    raise TelemetryBroke("telemetry is broken")


class RaisingTracer(trace.Tracer):
    start_span = _broken
    start_as_current_span = _broken


class RaisingSpan(trace.NonRecordingSpan):
    """Claims to record, then fails at everything it is asked to do."""

    def is_recording(self) -> bool:
        return True

    set_attributes = set_attribute = add_event = record_exception = set_status = end = _broken


class TracerOfRaisingSpans(trace.Tracer):
    def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
        return RaisingSpan(trace.INVALID_SPAN_CONTEXT)

    start_as_current_span = _broken


class BrokenTracerProvider(trace.TracerProvider):
    def __init__(self, fail_in_get_tracer: bool, tracer: trace.Tracer | None = None) -> None:
        self.fail_in_get_tracer = fail_in_get_tracer
        self.tracer = tracer or RaisingTracer()

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        if self.fail_in_get_tracer:
            _broken()
        return self.tracer


class RaisingHistogram(NoOpHistogram):
    record = _broken


class RaisingMeter(NoOpMeter):
    def create_histogram(self, name: str, *args: Any, **kwargs: Any) -> metrics.Histogram:
        return RaisingHistogram(name)


class BrokenMeterProvider(metrics.MeterProvider):
    def __init__(self, fail_in_get_meter: bool) -> None:
        self.fail_in_get_meter = fail_in_get_meter

    def get_meter(self, name: str, *args: Any, **kwargs: Any) -> metrics.Meter:
        if self.fail_in_get_meter:
            _broken()
        return RaisingMeter(name)


# failures, a suppression and a BaseException: every path through the wrappers
SCENARIO = Scenario(
    (
        Push("callback", "raise"),
        Push("push_async_exit", "suppress"),
        Push("enter_async_context", "raise_base"),
        Push("push", "ok"),
        Push("enter_context", "raise"),
    ),
    "raise",
)


def _fault_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    # the telemetry's own trouble, not the failed callbacks it logs (tests/test_cleanup_log.py)
    return [
        record
        for record in caplog.records
        if record.name.startswith("exitstack_otel") and "telemetry" in record.getMessage()
    ]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("broken", ["tracer", "spans", "meter", "both"])
def test_broken_spans_or_metrics_change_nothing_and_are_logged_once(
    broken: str, backend: str, sdk: Sdk, caplog: pytest.LogCaptureFixture
) -> None:
    tracer_provider: trace.TracerProvider = sdk.tracer_provider
    if broken in ("tracer", "both"):
        tracer_provider = BrokenTracerProvider(False)
    elif broken == "spans":
        tracer_provider = BrokenTracerProvider(False, TracerOfRaisingSpans())
    meter_provider = BrokenMeterProvider(False) if broken in ("meter", "both") else sdk.meter_provider
    telemetry = Telemetry.create(
        tracer_provider, meter_provider, TelemetryOptions(callback_spans="all", slow_callback_threshold=0)
    )
    assert telemetry is not None
    expected = run(AsyncExitStack, SCENARIO, backend)
    for _ in range(3):
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="exitstack_otel"):
            outer = trace.get_current_span()
            assert (
                run(lambda: InstrumentedAsyncExitStack("s", telemetry=telemetry), SCENARIO, backend)
                == expected
            )
            # a half-done unwind must not leave its span attached to the caller's context
            assert trace.get_current_span() is outer
        if _ == 0:
            assert _fault_records(caplog), "the first fault of each kind is logged"
            assert all(record.exc_info for record in _fault_records(caplog))
        else:
            assert _fault_records(caplog) == [], "each fault is logged only once"
    if broken == "tracer":
        # a failed span start must not leave the unwind counted as active forever
        active = sdk.metrics().get(semconv.UNWIND_ACTIVE)
        assert active is None or {point.value for point in number_points(active)} == {0}


@pytest.mark.anyio
@pytest.mark.parametrize("broken", ["tracer", "meter"])
async def test_providers_failing_to_make_a_tracer_or_meter_disable_telemetry(
    broken: str, sdk: Sdk, caplog: pytest.LogCaptureFixture
) -> None:
    source = TelemetrySource(
        BrokenTracerProvider(True) if broken == "tracer" else sdk.tracer_provider,
        BrokenMeterProvider(True) if broken == "meter" else sdk.meter_provider,
    )
    with caplog.at_level(logging.ERROR, logger="exitstack_otel"):
        telemetry = source.current()
        assert source.current() is telemetry
    assert telemetry is None
    assert len(_fault_records(caplog)) == 1
    log: list[str] = []
    async with InstrumentedAsyncExitStack(telemetry=telemetry) as stack:
        stack.callback(log.append, "ran")
    assert log == ["ran"]


@pytest.mark.anyio
async def test_a_raising_namer_falls_back_to_the_default_name(
    sdk: Sdk, caplog: pytest.LogCaptureFixture
) -> None:
    def namer(target: object, kind: str) -> str | None:
        raise TelemetryBroke("namer")

    telemetry = sdk.telemetry(callback_spans="all", callback_namer=namer)
    log: list[str] = []

    def close_upload() -> None:
        log.append("closed")

    with caplog.at_level(logging.ERROR, logger="exitstack_otel"):
        for _ in range(2):
            async with InstrumentedAsyncExitStack("s", telemetry=telemetry) as stack:
                stack.callback(close_upload)
    assert log == ["closed", "closed"]
    records = _fault_records(caplog)
    assert len(records) == 1
    assert "callback_namer" in records[0].getMessage()
    names = {span.name for span in sdk.spans() if span.name != semconv.SPAN_UNWIND}
    assert names == {f"{semconv.SPAN_CALLBACK} {close_upload.__qualname__}"}


@pytest.mark.anyio
async def test_a_failing_meter_still_ends_and_detaches_the_unwind_span(
    sdk: Sdk, caplog: pytest.LogCaptureFixture
) -> None:
    options = TelemetryOptions(callback_spans="all")  # a live unwind span, attached while callbacks run
    telemetry = Telemetry.create(sdk.tracer_provider, BrokenMeterProvider(False), options)
    log: list[str] = []
    with (
        caplog.at_level(logging.ERROR, logger="exitstack_otel"),
        sdk.tracer_provider.get_tracer("test").start_as_current_span("request") as request_span,
    ):
        async with InstrumentedAsyncExitStack("s", telemetry=telemetry) as stack:
            stack.callback(log.append, "ran")
        assert trace.get_current_span() is request_span
    assert log == ["ran"]
    (unwind,) = sdk.spans_named(semconv.SPAN_UNWIND)
    assert unwind.parent is not None
    assert unwind.parent.span_id == request_span.get_span_context().span_id
    assert len(_fault_records(caplog)) == 2  # one per place: the callback and the unwind end


@pytest.mark.anyio
async def test_requests_work_behind_providers_that_cannot_make_a_tracer_or_meter(
    sdk: Sdk, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(sdk, tracer_provider=BrokenTracerProvider(True), meter_provider=BrokenMeterProvider(True))
    transport = httpx.ASGITransport(app=app)
    with caplog.at_level(logging.ERROR, logger="exitstack_otel"):
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            for _ in range(2):
                assert (await client.get("/ok")).text == "ok"
            with pytest.raises(CleanupFailed):
                await client.get("/failing-cleanup")
    assert app.state.log == [
        "cleanup ok",
        "cleanup ok",
        "cleanup last pushed",
        "cleanup broken",
        "cleanup first pushed",
    ]
    assert len(_fault_records(caplog)) == 1
    assert sdk.spans() == ()


@pytest.mark.anyio
@pytest.mark.parametrize("where", ["identity", "on_push"])
async def test_a_failing_push_is_logged_once_and_its_callback_still_runs(
    where: str, sdk: Sdk, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # identity: the stack's own fast path for known code; on_push: code not seen before
    telemetry = sdk.telemetry()
    if where == "identity":
        monkeypatch.setattr(stack_module, "identity", _broken)
    else:
        monkeypatch.setattr(telemetry, "on_push", _broken)
    log: list[str] = []
    with caplog.at_level(logging.ERROR, logger="exitstack_otel"):
        for _ in range(2):
            async with InstrumentedAsyncExitStack("s", telemetry=telemetry) as stack:
                stack.callback(log.append, "sync")
                stack.push_async_callback(_append_soon, log, "async")
                assert len(stack._exit_callbacks) == 2
    assert log == ["async", "sync", "async", "sync"]
    records = _fault_records(caplog)
    assert len(records) == 1
    assert "push" in records[0].getMessage()


async def _append_soon(log: list[str], entry: str) -> None:
    log.append(entry)
