"""``TelemetryOptions`` refuses what it cannot use, in code, with a message naming the field."""

from __future__ import annotations

import math
from typing import Any

import pytest

from exitstack_otel import InstrumentedAsyncExitStack, TelemetryOptions
from exitstack_otel.demo.settings import DemoSettings
from exitstack_otel.demo.traffic import TrafficConfig

NOT_FINITE = [math.nan, math.inf, -math.inf]
SECONDS_FIELDS = ["slow_callback_threshold", "callback_timeout", "hung_callback_warning"]


@pytest.mark.parametrize("field", SECONDS_FIELDS)
@pytest.mark.parametrize("value", NOT_FINITE)
def test_nan_and_infinities_are_refused_for_every_number_of_seconds(field: str, value: float) -> None:
    # NaN slipped through "threshold < 0" (every healthy unwind then made a span); an infinite
    # timeout or warning is no number of seconds either: None says "never"
    fields: dict[str, Any] = {field: value}
    with pytest.raises(ValueError, match=f"{field} must be a finite"):
        TelemetryOptions(**fields)


def test_max_callback_names_takes_integers_only() -> None:
    for bad in [math.nan, math.inf, 2.0, True, 0]:
        with pytest.raises(ValueError, match="max_callback_names"):
            TelemetryOptions(max_callback_names=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", NOT_FINITE)
def test_a_stack_refuses_a_callback_timeout_that_is_not_finite(value: float) -> None:
    with pytest.raises(ValueError, match="callback_timeout must be a finite"):
        InstrumentedAsyncExitStack(callback_timeout=value)


def test_finite_values_at_the_edges_are_taken() -> None:
    options = TelemetryOptions(slow_callback_threshold=0, callback_timeout=1e-3, hung_callback_warning=1e9)
    assert (options.slow_callback_threshold, options.callback_timeout) == (0, 1e-3)
    assert InstrumentedAsyncExitStack(callback_timeout=2)._callback_timeout == 2.0


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"rate": math.inf}, "rate must be a finite number"),
        ({"rate": math.nan}, "rate must be a finite number"),
        ({"duration": math.inf}, "duration must be a finite number"),
        ({"mix": {"upload": math.inf}}, "mix weights must be finite"),
        ({"mix": {"upload": 1.0, "pool": math.nan}}, "mix weights must be finite"),
    ],
)
def test_the_demo_traffic_refuses_numbers_that_are_not_finite(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrafficConfig("http://127.0.0.1:1", **fields)


@pytest.mark.parametrize("value", [*NOT_FINITE, -1.0])
def test_the_demo_refuses_slow_seconds_that_are_not_a_finite_duration(value: float) -> None:
    with pytest.raises(ValueError, match="slow_seconds must be a finite number >= 0"):
        DemoSettings(slow_seconds=value)
