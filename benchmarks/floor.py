"""What the SDK itself charges for the calls our telemetry makes, measured in the same run."""

from __future__ import annotations

import time
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.util.types import AttributeValue

from exitstack_otel import semconv

from .variants import CountingSpanExporter

_ATTRIBUTES = {
    semconv.STACK_NAME: "fastapi_middleware_astack",
    semconv.CALLBACK_NAME: "_Resource",
    semconv.CALLBACK_KIND: semconv.KIND_ASYNC_CONTEXT,
    semconv.CALLBACK_OUTCOME: semconv.OUTCOME_OK,
}


@dataclass(frozen=True)
class SdkFloor:
    record_us: float
    """one histogram record with four attributes, no span current"""
    record_in_span_us: float
    """the same inside a sampled span: the SDK's trace-based exemplar filter then keeps an exemplar"""
    span_us: float
    """start and end of one span (always-on sampler, batch processor)"""
    full_spans_us: float
    """the four spans ``callback_spans="all"`` makes for 3 callbacks, made as it makes them: the
    unwind span with its five attributes, three callback spans under it with four each, explicit
    start and end times (``spans_like_full_mode``)"""


def _per_call_us(calls: int, start_ns: int) -> float:
    return (time.perf_counter_ns() - start_ns) / calls / 1000


def measure(calls: int) -> SdkFloor:
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    tracer_provider = TracerProvider(sampler=ALWAYS_ON)
    tracer_provider.add_span_processor(BatchSpanProcessor(CountingSpanExporter()))
    try:
        histogram = meter_provider.get_meter("floor").create_histogram(
            "floor", unit="s", explicit_bucket_boundaries_advisory=semconv.DURATION_BUCKETS
        )
        tracer = tracer_provider.get_tracer("floor")
        histogram.record(0.0003, _ATTRIBUTES)
        start = time.perf_counter_ns()
        for _ in range(calls):
            histogram.record(0.0003, _ATTRIBUTES)
        record = _per_call_us(calls, start)
        with trace.use_span(tracer.start_span("outer"), end_on_exit=True):
            start = time.perf_counter_ns()
            for _ in range(calls):
                histogram.record(0.0003, _ATTRIBUTES)
            record_in_span = _per_call_us(calls, start)
        start = time.perf_counter_ns()
        for _ in range(calls):
            tracer.start_span(semconv.SPAN_UNWIND).end()
        span = _per_call_us(calls, start)
        start = time.perf_counter_ns()
        for _ in range(calls):
            spans_like_full_mode(tracer, 3)
        tracer_provider.force_flush()  # as each in-process batch's own flush is inside its timing
        full_spans = _per_call_us(calls, start)
    finally:
        tracer_provider.shutdown()
        meter_provider.shutdown()
    return SdkFloor(record, record_in_span, span, full_spans)


_UNWIND_ATTRIBUTES: dict[str, AttributeValue] = {
    semconv.STACK_NAME: "exitstack_middleware",
    semconv.CALLBACK_COUNT: 3,
    semconv.CALLBACK_FAILED: 0,
    semconv.HTTP_ROUTE: "/cb/{n:int}",
    semconv.HTTP_REQUEST_METHOD: "GET",
}


def spans_like_full_mode(tracer: trace.Tracer, callbacks: int) -> None:
    """The SDK calls "all" makes for one unwind, and nothing of ours around them."""
    start_ns = time.time_ns()
    unwind = tracer.start_span(semconv.SPAN_UNWIND, kind=trace.SpanKind.INTERNAL, start_time=start_ns)
    context = trace.set_span_in_context(unwind)
    for index in range(callbacks):
        span = tracer.start_span(
            f"{semconv.SPAN_CALLBACK} _Resource",
            context=context,
            kind=trace.SpanKind.INTERNAL,
            attributes=_ATTRIBUTES,
            start_time=start_ns + index * 1000,
        )
        span.end(end_time=start_ns + index * 1000 + 500)
    unwind.set_attributes(_UNWIND_ATTRIBUTES)
    unwind.end(end_time=start_ns + callbacks * 1000)
