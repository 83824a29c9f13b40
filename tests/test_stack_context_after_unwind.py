"""The OpenTelemetry context after an unwind is what contextlib would leave, in every span mode."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AsyncExitStack

import pytest
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context

from exitstack_otel.stack import InstrumentedAsyncExitStack
from tests.support.otel_helpers import Sdk

MODES = ["contextlib", "problems", "all", "all-slow"]


def make_stack(sdk: Sdk, mode: str) -> AsyncExitStack:
    if mode == "contextlib":
        return AsyncExitStack()
    if mode == "all-slow":  # every callback a problem: spans and exemplars on the slow path
        return InstrumentedAsyncExitStack("s", telemetry=sdk.telemetry(slow_callback_threshold=0.0))
    return InstrumentedAsyncExitStack("s", telemetry=sdk.telemetry(callback_spans=mode))


async def context_after(sdk: Sdk, mode: str, push: Callable[[AsyncExitStack], None]) -> dict[str, object]:
    """Baggage and current span once the unwind is over, the request's span current before it."""
    tracer = sdk.tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("request") as request_span:
        stack = make_stack(sdk, mode)
        async with stack:
            push(stack)
        return {
            "baggage": dict(baggage.get_all()),
            "span is the request's": trace.get_current_span() is request_span,
        }


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
async def test_a_callback_that_detaches_baggage_leaves_it_detached(sdk: Sdk, mode: str) -> None:
    def push(stack: AsyncExitStack) -> None:
        token = otel_context.attach(baggage.set_baggage("user", "alice"))
        stack.callback(otel_context.detach, token)

    assert await context_after(sdk, mode, push) == {"baggage": {}, "span is the request's": True}


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
async def test_a_callback_that_attaches_baggage_keeps_it(sdk: Sdk, mode: str) -> None:
    def attach_baggage() -> None:
        otel_context.attach(baggage.set_baggage("tenant", "t1"))

    def push(stack: AsyncExitStack) -> None:
        stack.callback(attach_baggage)

    assert await context_after(sdk, mode, push) == {
        "baggage": {"tenant": "t1"},
        "span is the request's": True,
    }


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
async def test_a_callback_that_ends_a_span_it_made_current_earlier_leaves_the_parent(
    sdk: Sdk, mode: str
) -> None:
    tracer = sdk.tracer_provider.get_tracer("test")

    def push(stack: AsyncExitStack) -> None:
        # a dependency that opened a span and made it current, closed by the stack
        span = tracer.start_span("dependency")
        token = otel_context.attach(trace.set_span_in_context(span))

        def close() -> None:
            span.end()
            otel_context.detach(token)

        stack.callback(close)

    assert await context_after(sdk, mode, push) == {"baggage": {}, "span is the request's": True}
    assert [span.name for span in sdk.spans() if span.name == "dependency"] == ["dependency"]


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
async def test_a_callback_that_leaves_a_span_current_leaves_it_current(sdk: Sdk, mode: str) -> None:
    tracer = sdk.tracer_provider.get_tracer("test")
    left: list[trace.Span] = []

    def open_span() -> None:
        span = tracer.start_span("left open")
        left.append(span)
        otel_context.attach(trace.set_span_in_context(span))

    with tracer.start_as_current_span("request"):
        async with make_stack(sdk, mode) as stack:
            stack.callback(open_span)
        assert trace.get_current_span() is left[0]
