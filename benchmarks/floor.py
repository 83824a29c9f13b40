"""What the SDK itself charges for the calls our telemetry makes, measured in the same run."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_ON

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
    task_us: float
    """one asyncio task that does nothing, created and awaited: what the unwind's own task costs
    on Python 3.10 and 3.11, where tasks cannot start eagerly"""


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
    finally:
        tracer_provider.shutdown()
        meter_provider.shutdown()
    return SdkFloor(record, record_in_span, span, asyncio.run(_task_us(calls)))


async def _nothing() -> None:
    pass


async def _task_us(calls: int) -> float:
    loop = asyncio.get_running_loop()
    await loop.create_task(_nothing())
    start = time.perf_counter_ns()
    for _ in range(calls):
        await loop.create_task(_nothing())
    return _per_call_us(calls, start)
