"""Hostile values never reach telemetry from the stack: a failure's message stays in the exception
event, callback names are capped (tests/integration/test_security.py sends hostile requests)."""

from __future__ import annotations

from functools import partial

import pytest

from exitstack_otel import InstrumentedAsyncExitStack, semconv
from exitstack_otel.telemetry import Telemetry, TelemetryOptions
from tests.support.hostile import MARK, exported_strings
from tests.support.otel_helpers import Sdk


@pytest.mark.anyio
async def test_a_failing_callback_exports_its_message_only_in_the_exception_event(sdk: Sdk) -> None:
    # OpenTelemetry's exception event carries exception.message by design; everything else,
    # error.type and the span status included, names the class only.
    telemetry = Telemetry.create(sdk.tracer_provider, sdk.meter_provider, TelemetryOptions())

    def remove(path: str) -> None:
        raise FileNotFoundError(path)

    with pytest.raises(FileNotFoundError):
        async with InstrumentedAsyncExitStack("request", telemetry=telemetry) as stack:
            stack.callback(remove, f"/tmp/{MARK}")

    assert [value for _, value in exported_strings(sdk) if MARK in value] == []
    [failed] = [span for span in sdk.spans() if span.name != semconv.SPAN_UNWIND]
    assert failed.attributes is not None
    assert failed.attributes[semconv.ERROR_TYPE] == "FileNotFoundError"
    [event] = failed.events
    assert event.attributes is not None
    assert MARK in str(event.attributes["exception.message"])


@pytest.mark.anyio
async def test_callback_names_are_capped_per_middleware(sdk: Sdk) -> None:
    telemetry = Telemetry.create(
        sdk.tracer_provider, sdk.meter_provider, TelemetryOptions(max_callback_names=5)
    )

    def noop() -> None:
        pass

    # fifty distinct classes: fifty distinct default names, as generated code could produce
    callables = [type(f"Release{index}", (), {"__call__": lambda self: None})() for index in range(50)]
    async with InstrumentedAsyncExitStack("request", telemetry=telemetry) as stack:
        for release in callables:
            stack.push(partial(lambda release, *exc: release(), release))
            stack.callback(release)

    names = {point.attributes[semconv.CALLBACK_NAME] for point in sdk.points(semconv.CALLBACK_PUSHED)}
    assert len(names) == 6
    assert semconv.OTHER_NAME in names
    pushed = sum(point.value for point in sdk.points(semconv.CALLBACK_PUSHED))
    assert pushed == 100  # capped names, not lost counts
