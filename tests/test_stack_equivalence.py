"""InstrumentedAsyncExitStack behaves exactly as contextlib.AsyncExitStack, telemetry on or off."""

from __future__ import annotations

import os
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.trace import NoOpTracerProvider

from exitstack_otel import DEFAULT_SCOPE_KEY, ExitStackMiddleware, semconv
from exitstack_otel.stack import InstrumentedAsyncExitStack
from exitstack_otel.telemetry import Telemetry, TelemetryOptions
from tests.support.asgi import ContextlibMiddleware
from tests.support.otel_helpers import Sdk, histogram_points, number_points
from tests.support.stack_scenarios import (
    Aclose,
    Observed,
    PopAll,
    Push,
    Scenario,
    run,
    run_scenario_in_middleware,
    scenarios,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from starlette.types import ASGIApp

# `make test-pythons` runs this module on every supported Python with fewer examples
EXAMPLES = int(os.environ.get("EXITSTACK_EQUIVALENCE_EXAMPLES", "300"))

_sdk = Sdk()  # shared by every hypothesis example (a fixture would be per test); shut down at exit
TELEMETRY_MODES: dict[str, Callable[[], AsyncExitStack]] = {
    "sdk-problems": lambda: InstrumentedAsyncExitStack("s", telemetry=_sdk.telemetry()),
    "sdk-all": lambda: InstrumentedAsyncExitStack(
        "s", telemetry=_sdk.telemetry(callback_spans="all", slow_callback_threshold=0.0)
    ),
    "sdk-traces-only": lambda: InstrumentedAsyncExitStack(
        "s", telemetry=Telemetry.create(_sdk.tracer_provider, NoOpMeterProvider(), TelemetryOptions())
    ),
    "sdk-metrics-only": lambda: InstrumentedAsyncExitStack(
        "s", telemetry=Telemetry.create(NoOpTracerProvider(), _sdk.meter_provider, TelemetryOptions())
    ),
    # the global providers are the API's no-ops in this test session
    "noop-global": lambda: InstrumentedAsyncExitStack("s"),
    "none": lambda: InstrumentedAsyncExitStack("s", telemetry=None),
}


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("mode", sorted(TELEMETRY_MODES))
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios())
def test_same_observable_behaviour_as_contextlib(scenario: Scenario, mode: str, backend: str) -> None:
    expected = run(AsyncExitStack, scenario, backend)
    actual = run(TELEMETRY_MODES[mode], scenario, backend)
    assert actual == expected
    _sdk.spans_exporter.clear()


HAND_PICKED = [
    # a suppressing exit below a failing one swallows the failure; the body's error is gone too
    Scenario((Push("push", "suppress"), Push("callback", "raise")), "raise"),
    # every callback runs past a BaseException, and the last failure escapes with the chain
    Scenario(
        (Push("push_async_callback", "raise"), Push("callback", "raise_base"), Push("push", "ok")), "ok"
    ),
    # pop_all moves callbacks (and their instrumentation) to a new stack; aclose reuses a stack
    Scenario((Push("enter_context", "raise"), PopAll(), Push("enter_async_context", "suppress")), "raise"),
    Scenario((Push("push_async_cm", "raise"), Aclose(), Push("push_cm", "suppress")), "raise_base"),
    Scenario((Push("enter_context", "ok"), Push("enter_async_context", "enter_fails")), "ok"),
]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("mode", sorted(TELEMETRY_MODES))
@pytest.mark.parametrize("scenario", HAND_PICKED)
def test_hand_picked_scenarios(scenario: Scenario, mode: str, backend: str) -> None:
    expected = run(AsyncExitStack, scenario, backend)
    assert expected.escaped is not None or scenario.body_end == "ok" or "suppress" in repr(scenario)
    assert run(TELEMETRY_MODES[mode], scenario, backend) == expected


def test_scenarios_can_tell_stacks_apart() -> None:
    # guard against a comparison that always passes: a stack that runs callbacks FIFO must differ
    class FifoStack(AsyncExitStack):
        async def __aexit__(self, *exc_details: object) -> bool | None:
            self._exit_callbacks.reverse()  # type: ignore[attr-defined]
            return await super().__aexit__(*exc_details)  # type: ignore[arg-type]

    scenario = Scenario((Push("callback", "ok"), Push("push", "raise")), "ok")
    assert run(FifoStack, scenario, "asyncio") != run(AsyncExitStack, scenario, "asyncio")


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(max_examples=EXAMPLES // 3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios())
def test_telemetry_accounts_for_every_callback(scenario: Scenario, backend: str) -> None:
    sdk = Sdk()
    try:
        telemetry = sdk.telemetry(callback_spans="all")
        run(lambda: InstrumentedAsyncExitStack("s", telemetry=telemetry), scenario, backend)
        found = sdk.metrics()
        # metrics without a point yet are not exported at all
        pushed_points = (
            number_points(found[semconv.CALLBACK_PUSHED]) if semconv.CALLBACK_PUSHED in found else []
        )
        pushed = sum(point.value for point in pushed_points)
        durations = (
            histogram_points(found[semconv.CALLBACK_DURATION]) if semconv.CALLBACK_DURATION in found else []
        )
        # every stack is closed by the end of a scenario, so every pushed callback ran once
        assert sum(point.count for point in durations) == pushed
        unwinds = sdk.spans_named(semconv.SPAN_UNWIND)
        callbacks = [span for span in sdk.spans() if span.name.startswith(semconv.SPAN_CALLBACK + " ")]
        assert len(callbacks) == pushed
        unwind_ids = {span.context.span_id for span in unwinds}
        assert all(span.parent is not None and span.parent.span_id in unwind_ids for span in callbacks)
        counts = [dict(span.attributes or {})[semconv.CALLBACK_COUNT] for span in unwinds]
        assert all(isinstance(count, int) for count in counts)
        assert sum(count for count in counts if isinstance(count, int)) == pushed
        active = number_points(found[semconv.UNWIND_ACTIVE]) if semconv.UNWIND_ACTIVE in found else []
        assert {point.value for point in active} <= {0}
    finally:
        sdk.shutdown()


MIDDLEWARES: dict[str, Callable[[ASGIApp], ASGIApp]] = {
    "sdk-problems": lambda app: ExitStackMiddleware(
        app, tracer_provider=_sdk.tracer_provider, meter_provider=_sdk.meter_provider
    ),
    "sdk-all": lambda app: ExitStackMiddleware(
        app, tracer_provider=_sdk.tracer_provider, meter_provider=_sdk.meter_provider, callback_spans="all"
    ),
    "noop-global": ExitStackMiddleware,
}


def _through(middleware: Callable[[ASGIApp], ASGIApp], scenario: Scenario, backend: str) -> Observed:
    make_stack = AsyncExitStack if middleware is ContextlibMiddleware else InstrumentedAsyncExitStack

    async def main() -> Observed:
        return await run_scenario_in_middleware(middleware, DEFAULT_SCOPE_KEY, make_stack, scenario)

    return anyio.run(main, backend=backend)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("mode", sorted(MIDDLEWARES))
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios())
def test_the_middleware_unwinds_as_contextlibs_middleware(
    scenario: Scenario, mode: str, backend: str
) -> None:
    # the endpoint's escape, every callback's arguments, the exception each one sees being handled
    # (after a suspension too) and the chain that escapes the middleware, as FastAPI's own has them
    assert _through(MIDDLEWARES[mode], scenario, backend) == _through(ContextlibMiddleware, scenario, backend)
    _sdk.spans_exporter.clear()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("scenario", HAND_PICKED)
def test_hand_picked_scenarios_through_the_middleware(scenario: Scenario, backend: str) -> None:
    expected = _through(ContextlibMiddleware, scenario, backend)
    assert _through(MIDDLEWARES["sdk-problems"], scenario, backend) == expected
