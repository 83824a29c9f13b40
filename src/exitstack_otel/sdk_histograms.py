"""Placeholder until the fast-path module lands: every measurement goes through ``record()``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from opentelemetry import metrics
from opentelemetry.context import Context
from opentelemetry.util.types import AttributeValue


class HistogramSeries:
    __slots__ = ("_attributes", "_histogram")

    def __init__(self, histogram: metrics.Histogram, attributes: Mapping[str, AttributeValue]) -> None:
        self._histogram = histogram
        self._attributes = attributes

    def record(self, value: float) -> None:
        self._histogram.record(value, self._attributes)


class FastHistogram:
    def __init__(
        self,
        meter_provider: metrics.MeterProvider,
        meter: metrics.Meter,
        name: str,
        *,
        unit: str,
        description: str,
        boundaries: Sequence[float],
    ) -> None:
        self._histogram = meter.create_histogram(
            name, unit=unit, description=description, explicit_bucket_boundaries_advisory=boundaries
        )
        self.fallback_reason: str | None = "placeholder"

    @property
    def fast(self) -> bool:
        return False

    def series(self, attributes: Mapping[str, AttributeValue]) -> HistogramSeries:
        return HistogramSeries(self._histogram, attributes)

    def record(
        self, value: float, attributes: Mapping[str, AttributeValue], context: Context | None = None
    ) -> None:
        self._histogram.record(value, attributes, context=context)
