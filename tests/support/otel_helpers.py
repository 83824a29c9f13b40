"""Real OpenTelemetry SDK providers with in-memory exporters, and readers for what they hold.

Tests take the ``sdk`` fixture of tests/conftest.py (shut down after the test); one that needs a
second pair of providers makes an ``Sdk()`` and shuts it down in a ``finally``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.metrics import _internal as metrics_internal
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader, Metric, NumberDataPoint
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once

from exitstack_otel.telemetry import Telemetry, TelemetryOptions

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence


@dataclass
class Sdk:
    tracer_provider: TracerProvider = field(default_factory=TracerProvider)
    spans_exporter: InMemorySpanExporter = field(default_factory=InMemorySpanExporter)
    reader: InMemoryMetricReader = field(default_factory=InMemoryMetricReader)
    meter_provider: MeterProvider = field(init=False)

    def __post_init__(self) -> None:
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans_exporter))
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def telemetry(self, **options: Any) -> Telemetry:
        telemetry = Telemetry.create(self.tracer_provider, self.meter_provider, TelemetryOptions(**options))
        assert telemetry is not None
        return telemetry

    def spans(self) -> tuple[ReadableSpan, ...]:
        return self.spans_exporter.get_finished_spans()

    def spans_named(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.spans() if span.name == name]

    def metrics(self) -> dict[str, Metric]:
        found: dict[str, Metric] = {}
        data = self.reader.get_metrics_data()
        if data is None:
            return found
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    found[metric.name] = metric
        return found

    def points(self, metric_name: str) -> list[Any]:
        """Every data point of one metric, whatever its type; none before anything was recorded."""
        metric = self.metrics().get(metric_name)
        return [] if metric is None else list(metric.data.data_points)

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def reset_global_providers() -> None:
    """Forget the global tracer and meter providers, which the API lets a process set only once.

    Private to the API, as its own test utilities do it; for tests of what the globals give.
    """
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
    metrics_internal._METER_PROVIDER_SET_ONCE = Once()
    metrics_internal._METER_PROVIDER = None


def points(metric: Metric) -> Sequence[Any]:
    return list(metric.data.data_points)


def histogram_points(metric: Metric) -> list[HistogramDataPoint]:
    found = [point for point in metric.data.data_points if isinstance(point, HistogramDataPoint)]
    assert len(found) == len(metric.data.data_points)
    return found


def number_points(metric: Metric) -> list[NumberDataPoint]:
    found = [point for point in metric.data.data_points if isinstance(point, NumberDataPoint)]
    assert len(found) == len(metric.data.data_points)
    return found


def attrs(point: Any) -> dict[str, Any]:
    return dict(point.attributes or {})


def by_attrs(
    found: list[HistogramDataPoint] | list[NumberDataPoint],
) -> Iterator[tuple[frozenset[tuple[str, Any]], Any]]:
    for point in found:
        yield frozenset(attrs(point).items()), point
