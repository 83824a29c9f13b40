"""The spans of docs/telemetry.md: made after the fact with their real times, or live with ``"all"``.

Times on the hot path are ``perf_counter()`` readings; a ``Clock`` reads both clocks once, when
spans are made, and turns those readings into the epoch nanoseconds spans carry.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import NamedTuple

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from . import semconv
from .failure_budget import FailureKind

Attributes = Mapping[str, AttributeValue]


class CallbackRun(NamedTuple):
    """One executed callback as a span will show it; ``exc`` and ``failure`` only when it failed."""

    span_name: str
    attributes: Attributes
    start: float
    end: float
    exc: BaseException | None
    failure: FailureKind | None = None


class Clock(NamedTuple):
    epoch_ns: int
    perf: float

    @classmethod
    def now(cls) -> Clock:
        return cls(time.time_ns(), time.perf_counter())

    def to_epoch_ns(self, perf: float) -> int:
        return self.epoch_ns + int((perf - self.perf) * 1e9)


def unwind_after_the_fact(
    tracer: trace.Tracer,
    parent: otel_context.Context | None,
    clock: Clock,
    start: float,
    end: float,
    attributes: Attributes,
    error_type: str | None,
) -> otel_context.Context:
    span = tracer.start_span(
        semconv.SPAN_UNWIND,
        context=parent,
        kind=SpanKind.INTERNAL,
        attributes=attributes,
        start_time=clock.to_epoch_ns(start),
    )
    if error_type is not None:
        span.set_status(Status(StatusCode.ERROR, error_type))
    span.end(end_time=clock.to_epoch_ns(end))
    return trace.set_span_in_context(span, parent)


def callback_after_the_fact(
    tracer: trace.Tracer, parent: otel_context.Context | None, clock: Clock, run: CallbackRun
) -> otel_context.Context:
    span = tracer.start_span(
        run.span_name,
        context=parent,
        kind=SpanKind.INTERNAL,
        attributes=run.attributes,
        start_time=clock.to_epoch_ns(run.start),
    )
    try:
        if run.exc is not None:
            record_failure(span, run.exc, run.attributes)
    finally:
        span.end(end_time=clock.to_epoch_ns(run.end))
    return trace.set_span_in_context(span, parent)


def record_failure(span: trace.Span, exc: BaseException, attributes: Attributes) -> None:
    error_type = str(attributes.get(semconv.ERROR_TYPE, type(exc).__qualname__))
    span.set_status(Status(StatusCode.ERROR, error_type))
    try:
        span.record_exception(exc)
    except Exception:
        # an exception whose __str__ or traceback cannot be rendered still gets its event
        span.add_event(
            semconv.EVENT_EXCEPTION,
            {
                semconv.EXCEPTION_TYPE: error_type,
                semconv.EXCEPTION_MESSAGE: f"<unprintable {type(exc).__qualname__} object>",
            },
        )


class LiveUnwind:
    """The ``"all"`` mode's unwind span: current while the callbacks run, so theirs nest under it."""

    __slots__ = ("clock", "context", "parent", "span", "token")

    def __init__(self, span: trace.Span, parent: otel_context.Context | None, clock: Clock) -> None:
        self.span = span
        self.parent = parent
        self.clock = clock
        self.context = trace.set_span_in_context(span, parent)
        self.token = otel_context.attach(self.context)

    @classmethod
    def start(cls, tracer: trace.Tracer, parent: otel_context.Context | None) -> LiveUnwind:
        clock = Clock.now()
        span = tracer.start_span(
            semconv.SPAN_UNWIND, context=parent, kind=SpanKind.INTERNAL, start_time=clock.epoch_ns
        )
        return cls(span, parent, clock)

    def callback_span(self, tracer: trace.Tracer, run: CallbackRun) -> otel_context.Context | None:
        if not self.span.is_recording():
            return None  # unsampled trace: metrics only
        return callback_after_the_fact(tracer, self.context, self.clock, run)

    def end(self, attributes: Attributes, error_type: str | None, end: float) -> otel_context.Context:
        try:
            self._leave_context()
        finally:
            span = self.span
            if span.is_recording():
                span.set_attributes(attributes)
                if error_type is not None:
                    span.set_status(Status(StatusCode.ERROR, error_type))
            span.end(end_time=self.clock.to_epoch_ns(end))
        return self.context

    def _leave_context(self) -> None:
        # What contextlib would leave: what the callbacks did to the context stays, only our span goes.
        current = otel_context.get_current()
        if current is self.context:
            otel_context.detach(self.token)
        elif trace.get_current_span(current) is self.span:
            otel_context.attach(trace.set_span_in_context(trace.get_current_span(self.parent), current))
