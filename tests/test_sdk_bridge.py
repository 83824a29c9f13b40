"""The merged fast path exports, field by field, what one record() per measurement exports.

Each test feeds the same values to a FastHistogram on one SDK provider and to a plain SDK Histogram
on a second provider with the same readers and views, collects both and compares the points.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import os
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    InMemoryMetricReader,
    MetricReader,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import (
    Aggregation,
    DropAggregation,
    ExplicitBucketHistogramAggregation,
    ExponentialBucketHistogramAggregation,
    View,
)
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from opentelemetry.util.types import AttributeValue
from prometheus_client import CollectorRegistry, generate_latest

from exitstack_otel.histogram_series import HistogramSeries
from exitstack_otel.sdk_bridge import FastHistogram
from tests.support.otlp_receiver import OtlpReceiver

NAME = "exitstack.test.duration"
BOUNDARIES = (0.005, 0.01, 0.1, 1.0, 10.0)
ROUTES = (
    {"route": "/a", "method": "GET"},
    {"route": "/b", "method": "POST"},
    {"route": "/c", "method": "GET"},
)
TIMES = frozenset({"start_time_unix_nano", "time_unix_nano", "exemplars"})
Temporality = dict[type, AggregationTemporality]
DELTA: Temporality = {Histogram: AggregationTemporality.DELTA}
CUMULATIVE: Temporality = {Histogram: AggregationTemporality.CUMULATIVE}
Attributes = Mapping[str, AttributeValue]


class Pair:
    """A FastHistogram on one provider and a plain Histogram on another, fed the same values."""

    def __init__(
        self,
        fast_readers: Sequence[MetricReader],
        plain_readers: Sequence[MetricReader],
        views: Sequence[View],
    ) -> None:
        self.fast_provider = MeterProvider(metric_readers=fast_readers, views=views, shutdown_on_exit=False)
        self.plain_provider = MeterProvider(metric_readers=plain_readers, views=views, shutdown_on_exit=False)
        self.histogram = FastHistogram(
            self.fast_provider,
            self.fast_provider.get_meter("test"),
            NAME,
            unit="s",
            description="cleanup time",
            boundaries=BOUNDARIES,
        )
        self.plain = self.plain_provider.get_meter("test").create_histogram(
            NAME, unit="s", description="cleanup time", explicit_bucket_boundaries_advisory=BOUNDARIES
        )
        self._series: dict[tuple[tuple[str, AttributeValue], ...], HistogramSeries] = {}
        self._shut_down = False

    def series(self, attributes: Attributes) -> HistogramSeries:
        key = tuple(sorted(attributes.items()))
        if key not in self._series:  # the caller's cache, as the lead's telemetry keeps it
            self._series[key] = self.histogram.series(attributes)
        return self._series[key]

    def record(self, value: float, attributes: Attributes) -> None:
        self.series(attributes).record(value)
        self.plain.record(value, attributes)

    def shutdown(self) -> None:
        if self._shut_down:
            return
        self._shut_down = True
        self.fast_provider.shutdown()
        self.plain_provider.shutdown()


@contextmanager
def pair(
    fast_readers: Sequence[MetricReader], plain_readers: Sequence[MetricReader], views: Sequence[View] = ()
) -> Iterator[Pair]:
    made = Pair(fast_readers, plain_readers, views)
    try:
        yield made
    finally:
        made.shutdown()


def exported(data: MetricsData | None) -> dict[str, list[dict[str, Any]]]:
    """Metric name -> its points' fields (times and exemplars left out), ordered by attributes."""
    found: dict[str, list[dict[str, Any]]] = {}
    for resource_metrics in data.resource_metrics if data else ():
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                points = [fields_of(point) for point in metric.data.data_points]
                found[metric.name] = sorted(points, key=lambda point: sorted(point["attributes"].items()))
    return found


def fields_of(point: Any) -> dict[str, Any]:
    fields = {field.name: getattr(point, field.name) for field in dataclasses.fields(point)}
    fields["attributes"] = dict(fields["attributes"] or {})
    # NaN (which SDKs before 1.3x record) equals nothing, not even the other side's NaN
    return {name: "NaN" if value != value else value for name, value in fields.items() if name not in TIMES}


def collect_both(made: Pair, fast_reader: InMemoryMetricReader, plain_reader: InMemoryMetricReader) -> None:
    fast, plain = exported(fast_reader.get_metrics_data()), exported(plain_reader.get_metrics_data())
    assert fast == plain
    assert set(fast) <= {NAME}  # the collection hook itself exports nothing


def two_in_memory(temporality: Temporality) -> tuple[InMemoryMetricReader, ...]:
    return InMemoryMetricReader(preferred_temporality=temporality), InMemoryMetricReader(
        preferred_temporality=temporality
    )


def test_the_installed_sdk_takes_the_fast_path() -> None:
    fast_reader, plain_reader = two_in_memory(CUMULATIVE)
    with pair([fast_reader], [plain_reader]) as made:
        assert made.histogram.fast
        assert made.histogram.fallback_reason is None


# values as a service records them, and some record() refuses (negative, NaN, infinite)
VALUES = st.one_of(
    st.floats(min_value=0, max_value=30, allow_nan=False),
    st.integers(min_value=0, max_value=30),
    st.sampled_from([*BOUNDARIES, 0.0, -0.0, -1.0, math.nan, math.inf]),
)
COLLECT = None
STEPS = st.lists(
    st.one_of(st.tuples(VALUES, st.sampled_from(range(len(ROUTES)))), st.just(COLLECT)), max_size=80
)


@pytest.mark.parametrize("temporality", [CUMULATIVE, DELTA], ids=["cumulative", "delta"])
@settings(max_examples=60, deadline=None)
@given(steps=STEPS)
def test_in_memory_points_equal_record_per_measurement(
    temporality: Temporality, steps: list[tuple[float, int] | None]
) -> None:
    fast_reader, plain_reader = two_in_memory(temporality)
    with pair([fast_reader], [plain_reader]) as made:
        for step in steps:
            if step is COLLECT:
                collect_both(made, fast_reader, plain_reader)
            else:
                value, route = step
                made.record(value, ROUTES[route])
        collect_both(made, fast_reader, plain_reader)


@pytest.mark.parametrize("temporality", [CUMULATIVE, DELTA], ids=["cumulative", "delta"])
def test_collections_with_nothing_new_repeat_or_stay_silent(
    temporality: Temporality,
) -> None:
    fast_reader, plain_reader = two_in_memory(temporality)
    with pair([fast_reader], [plain_reader]) as made:
        for value in (0.003, 0.2, 4.0):
            made.record(value, ROUTES[0])
        first = exported(fast_reader.get_metrics_data())
        assert first == exported(plain_reader.get_metrics_data())
        assert first[NAME][0]["count"] == 3
        for _ in range(3):
            again = exported(fast_reader.get_metrics_data())
            assert again == exported(plain_reader.get_metrics_data())
            # cumulative: the same point again; delta: no point at all
            assert again == (first if temporality is CUMULATIVE else {})


@pytest.mark.parametrize("temporality", [CUMULATIVE, DELTA], ids=["cumulative", "delta"])
def test_new_attributes_between_collections_and_start_times(
    temporality: Temporality,
) -> None:
    fast_reader, plain_reader = two_in_memory(temporality)
    with pair([fast_reader], [plain_reader]) as made:
        before = time.time_ns()
        made.record(0.5, ROUTES[0])
        first = fast_reader.get_metrics_data()
        assert exported(first) == exported(plain_reader.get_metrics_data())
        made.record(0.02, ROUTES[1])
        made.record(7.0, ROUTES[0])
        second = fast_reader.get_metrics_data()
        assert exported(second) == exported(plain_reader.get_metrics_data())
        assert [point["attributes"] for point in exported(second)[NAME]] == [ROUTES[0], ROUTES[1]]

        first_point = first_point_of(first)
        # a series starts before its first value was recorded, and no later than its first collection
        assert before <= first_point.start_time_unix_nano <= first_point.time_unix_nano
        again, new = sorted(points_of(second), key=lambda point: point.attributes != ROUTES[0])
        if temporality is DELTA:  # a delta window begins where the last one ended
            assert again.start_time_unix_nano == first_point.time_unix_nano
        else:  # a cumulative series keeps its start
            assert again.start_time_unix_nano == first_point.start_time_unix_nano
        # a new series starts after the earlier collection, before its first value
        # (opentelemetry-sdk 1.45.1 and newer start a new delta series exactly at that collection)
        assert first_point.time_unix_nano <= new.start_time_unix_nano <= new.time_unix_nano

        # one series idle for a collection, then back: its window starts at the last collection
        made.record(0.03, ROUTES[1])
        third = points_of(fast_reader.get_metrics_data())[0]
        made.record(0.04, ROUTES[0])
        (back,) = [
            point for point in points_of(fast_reader.get_metrics_data()) if point.attributes == ROUTES[0]
        ]
        assert (back.attributes, back.count) == (ROUTES[0], 1 if temporality is DELTA else 3)
        if temporality is DELTA:
            assert back.start_time_unix_nano == third.time_unix_nano
        else:
            assert back.start_time_unix_nano == first_point.start_time_unix_nano


def points_of(data: MetricsData | None) -> list[Any]:
    assert data is not None
    return [
        point
        for resource_metrics in data.resource_metrics
        for scope_metrics in resource_metrics.scope_metrics
        for metric in scope_metrics.metrics
        for point in metric.data.data_points
    ]


def points_or_none(data: MetricsData | None) -> list[Any]:
    return [] if data is None else points_of(data)


def first_point_of(data: MetricsData | None) -> Any:
    return points_of(data)[0]


def exact_values(count: int, seed: int) -> list[float]:
    """Multiples of 1/64: their sums are exact whatever the order of the adds."""
    return [((seed + index * 37) % 900) / 64 for index in range(count)]


def test_two_readers_each_export_every_value_once() -> None:
    fast_readers = (
        InMemoryMetricReader(preferred_temporality=CUMULATIVE),
        InMemoryMetricReader(preferred_temporality=DELTA),
    )
    plain_readers = (
        InMemoryMetricReader(preferred_temporality=CUMULATIVE),
        InMemoryMetricReader(preferred_temporality=DELTA),
    )
    with pair(fast_readers, plain_readers) as made:
        assert made.histogram.fast
        order = [0, 1, 0, 1, 1, 0, 0]
        for round_, reader in enumerate(order):
            for index, value in enumerate(exact_values(25, round_)):
                made.record(value, ROUTES[(index + round_) % (1 + round_ % 3)])
            collect_both(made, fast_readers[reader], plain_readers[reader])
        for reader in (1, 1, 0):  # nothing new
            collect_both(made, fast_readers[reader], plain_readers[reader])


def test_collection_racing_with_records_from_other_threads() -> None:
    fast_reader = InMemoryMetricReader(preferred_temporality=DELTA)
    plain_reader = InMemoryMetricReader(preferred_temporality=CUMULATIVE)
    with pair([fast_reader], [plain_reader]) as made:
        series = made.histogram.series(ROUTES[0])
        started, stop = threading.Event(), threading.Event()
        recorded: list[float] = []

        def record_until_stopped() -> None:
            index = 0
            while not stop.is_set() or index < 1000:
                value = exact_values(1, index)[0]
                if index % 50 == 0:  # the SDK's own record() into the same series, racing too
                    made.histogram.record(value, ROUTES[0])
                else:
                    series.record(value)
                recorded.append(value)
                index += 1
                started.set()

        # two recorders on one series: their appends race each other's folds and the collections
        recorders = [threading.Thread(target=record_until_stopped) for _ in range(2)]
        for recorder in recorders:
            recorder.start()
        started.wait()
        collected: list[Any] = []
        for _ in range(10):  # the recorders run until these collections are done
            collected.extend(points_or_none(fast_reader.get_metrics_data()))
        stop.set()
        for recorder in recorders:
            recorder.join()
        collected.extend(points_or_none(fast_reader.get_metrics_data()))
        for value in recorded:
            made.plain.record(value, ROUTES[0])
        want = exported(plain_reader.get_metrics_data())[NAME][0]
        assert sum(point.count for point in collected) == want["count"] == len(recorded)
        assert math.fsum(point.sum for point in collected) == want["sum"]
        totals = [sum(counts) for counts in zip(*(point.bucket_counts for point in collected), strict=True)]
        assert tuple(totals) == want["bucket_counts"]
        assert min(point.min for point in collected) == want["min"]
        assert max(point.max for point in collected) == want["max"]


@pytest.mark.integration  # an OTLP receiver: a server (kept here, beside the helpers it shares)
def test_collection_in_the_periodic_readers_thread_racing_with_records() -> None:
    with OtlpReceiver() as fast_receiver, OtlpReceiver() as plain_receiver:
        fast_readers = [otlp_reader(fast_receiver, DELTA, interval_millis=5)]
        with pair(fast_readers, [otlp_reader(plain_receiver, CUMULATIVE)]) as made:
            recorded = 0
            # record until the reader's thread has exported several times meanwhile
            while len(fast_receiver.received.snapshot()[1]) < 6 or recorded < 1000:
                for value in exact_values(100, recorded):
                    made.record(value, ROUTES[recorded % 2])
                    recorded += 1
        # shutdown collected and exported what was left
        fast_points = histogram_points(fast_receiver)
        for route in ROUTES[:2]:
            want = [point for point in histogram_points(plain_receiver) if point["attributes"] == route]
            got = [point for point in fast_points if point["attributes"] == route]
            assert sum(point["count"] for point in got) == want[0]["count"] == recorded // 2
            assert math.fsum(point["sum"] for point in got) == want[0]["sum"]
            totals = tuple(
                sum(counts) for counts in zip(*(point["bucket_counts"] for point in got), strict=True)
            )
            assert totals == want[0]["bucket_counts"]
            assert min(point["min"] for point in got) == want[0]["min"]
            assert max(point["max"] for point in got) == want[0]["max"]


def otlp_reader(
    receiver: OtlpReceiver,
    temporality: Temporality,
    interval_millis: float = 3_600_000,
) -> PeriodicExportingMetricReader:
    exporter = OTLPMetricExporter(
        endpoint=f"{receiver.endpoint}/v1/metrics", preferred_temporality=temporality
    )
    return PeriodicExportingMetricReader(exporter, export_interval_millis=interval_millis)


def histogram_points(receiver: OtlpReceiver) -> list[dict[str, Any]]:
    _, points = receiver.received.snapshot()
    assert {point["metric"] for point in points} <= {NAME}
    return [point for point in points if point["metric"] == NAME]


def without_times(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            name: value
            for name, value in point.items()
            if name not in {"start_time_unix_nano", "time_unix_nano"}
        }
        for point in points
    ]


@pytest.mark.integration  # an OTLP receiver: a server (kept here, beside the helpers it shares)
@pytest.mark.parametrize("temporality", [CUMULATIVE, DELTA], ids=["cumulative", "delta"])
def test_periodic_otlp_export_equals_record_per_measurement(
    temporality: Temporality,
) -> None:
    with OtlpReceiver() as fast_receiver, OtlpReceiver() as plain_receiver:
        with pair(
            [otlp_reader(fast_receiver, temporality)], [otlp_reader(plain_receiver, temporality)]
        ) as made:
            # before 1.3x the OTLP exporter ignores bucket advice, so record() itself exports other
            # buckets: falling back (said in the log) is what keeps the points the same there
            assert made.histogram.fast or "bucket" in (made.histogram.fallback_reason or "")
            for round_ in range(3):
                for index, value in enumerate(exact_values(40, round_)):
                    made.record(value * 0.01, ROUTES[index % (round_ + 1)])
                made.fast_provider.force_flush()
                made.plain_provider.force_flush()
            made.record(0.5, ROUTES[2])  # exported by the final collection at shutdown
        fast_points = histogram_points(fast_receiver)
        assert without_times(fast_points) == without_times(histogram_points(plain_receiver))
        assert sum(point["count"] for point in fast_points if point["attributes"] == ROUTES[2]) > 0
        for point in fast_points:
            assert 0 < point["start_time_unix_nano"] <= point["time_unix_nano"]


def test_prometheus_scrape_equals_record_per_measurement() -> None:
    if "registry" not in inspect.signature(PrometheusMetricReader).parameters:
        pytest.skip("this opentelemetry-exporter-prometheus serves the global registry only")
    fast_registry, plain_registry = CollectorRegistry(), CollectorRegistry()
    fast_reader = PrometheusMetricReader(registry=fast_registry)
    plain_reader = PrometheusMetricReader(registry=plain_registry)
    with pair([fast_reader], [plain_reader]) as made:
        assert made.histogram.fast
        for round_ in range(3):
            for index, value in enumerate(exact_values(30, round_)):
                made.record(value * 0.001, ROUTES[(index + round_) % 3])
            fast_text = generate_latest(fast_registry).decode()
            assert fast_text == generate_latest(plain_registry).decode()
            assert "exitstack_test_duration_seconds_bucket" in fast_text
            assert "collection_hook" not in fast_text


def values_for_two_routes(made: Pair) -> None:
    for index, value in enumerate(exact_values(60, 5)):
        made.record(value * 0.01, ROUTES[index % 2])


FALLBACK_VIEWS = {
    "other buckets": (
        [View(instrument_name=NAME, aggregation=ExplicitBucketHistogramAggregation((0.1, 1.0)))],
        "buckets",
    ),
    "exponential": (
        [View(instrument_name=NAME, aggregation=ExponentialBucketHistogramAggregation())],
        "ExponentialBucketHistogramAggregation",
    ),
    "attribute keys": ([View(instrument_name=NAME, attribute_keys={"route"})], "attribute keys"),
    "dropped": ([View(instrument_name=NAME, aggregation=DropAggregation())], "DropAggregation"),
}


@pytest.mark.parametrize("case", list(FALLBACK_VIEWS))
def test_a_view_that_changes_the_stream_falls_back_and_stays_exact(case: str) -> None:
    views, reason = FALLBACK_VIEWS[case]
    fast_reader, plain_reader = two_in_memory(CUMULATIVE)
    with pair([fast_reader], [plain_reader], views) as made:
        assert not made.histogram.fast
        assert reason in (made.histogram.fallback_reason or "")
        values_for_two_routes(made)
        collect_both(made, fast_reader, plain_reader)


def test_a_reader_that_prefers_exponential_histograms_falls_back() -> None:
    preferred: dict[type, Aggregation] = {Histogram: ExponentialBucketHistogramAggregation()}
    fast_reader, plain_reader = (InMemoryMetricReader(preferred_aggregation=preferred) for _ in range(2))
    with pair([fast_reader], [plain_reader]) as made:
        assert not made.histogram.fast
        values_for_two_routes(made)
        collect_both(made, fast_reader, plain_reader)


def test_a_view_that_only_renames_keeps_the_fast_path() -> None:
    views = [View(instrument_name=NAME, name="renamed", description="renamed too")]
    fast_reader, plain_reader = two_in_memory(CUMULATIVE)
    with pair([fast_reader], [plain_reader], views) as made:
        assert made.histogram.fast
        values_for_two_routes(made)
        fast = exported(fast_reader.get_metrics_data())
        assert fast == exported(plain_reader.get_metrics_data())
        assert set(fast) == {"renamed"}


def test_a_reader_added_later_that_cannot_merge_switches_to_fallback_keeping_the_counts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    if not hasattr(MeterProvider, "add_metric_reader"):
        pytest.skip("this opentelemetry-sdk cannot add a reader to a running provider")
    fast_reader, plain_reader = two_in_memory(CUMULATIVE)
    with pair([fast_reader], [plain_reader]) as made:
        values_for_two_routes(made)
        preferred: dict[type, Aggregation] = {Histogram: ExponentialBucketHistogramAggregation()}
        made.fast_provider.add_metric_reader(InMemoryMetricReader(preferred_aggregation=preferred))
        with caplog.at_level(logging.INFO, logger="exitstack_otel"):
            fast = exported(fast_reader.get_metrics_data())
        assert not made.histogram.fast
        assert "ExponentialBucketHistogramAggregation" in (made.histogram.fallback_reason or "")
        assert len(caplog.records) == 1
        values_for_two_routes(made)  # now through record(), from the series the caller holds
        fast = exported(fast_reader.get_metrics_data())
        plain = exported(plain_reader.get_metrics_data())
        # the batch accumulated before the switch is replayed through record(): its values are gone,
        # so the sum is only close; count, buckets, min and max are exact
        for got, want in zip(fast[NAME], plain[NAME], strict=True):
            assert got["sum"] == pytest.approx(want["sum"])
            assert {**got, "sum": 0} == {**want, "sum": 0}


def test_records_after_shutdown_raise_nothing_and_match_the_sdk() -> None:
    fast_reader, plain_reader = two_in_memory(DELTA)
    with pair([fast_reader], [plain_reader]) as made:
        made.record(0.5, ROUTES[0])
        collect_both(made, fast_reader, plain_reader)
        made.shutdown()
        made.record(0.7, ROUTES[0])
        made.record(0.8, ROUTES[1])
        made.histogram.record(0.9, ROUTES[0])
        made.plain.record(0.9, ROUTES[0])
        # whatever the SDK's reader still does after shutdown, it does the same for both
        collect_both(made, fast_reader, plain_reader)


def test_a_provider_shut_down_before_setup_falls_back() -> None:
    provider = MeterProvider(metric_readers=[InMemoryMetricReader()], shutdown_on_exit=False)
    provider.shutdown()
    # a shut-down provider hands out a no-op meter
    histogram = FastHistogram(
        provider, provider.get_meter("test"), NAME, unit="s", description="", boundaries=BOUNDARIES
    )
    histogram.series(ROUTES[0]).record(0.1)
    histogram.record(0.1, ROUTES[0])
    assert not histogram.fast
    assert "not the SDK's histogram" in (histogram.fallback_reason or "")


def test_a_fallback_reason_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    provider = NoOpMeterProvider()
    with caplog.at_level(logging.INFO, logger="exitstack_otel"):
        made = [
            FastHistogram(
                provider, provider.get_meter("test"), NAME, unit="s", description="", boundaries=BOUNDARIES
            )
            for _ in range(3)
        ]
    for histogram in made:
        assert not histogram.fast
        histogram.series(ROUTES[0]).record(0.1)
    assert made[0].fallback_reason == "the meter provider is a NoOpMeterProvider, not the SDK's"
    assert [(record.levelno, record.getMessage()) for record in caplog.records] == [
        (
            logging.INFO,
            "the meter provider is a NoOpMeterProvider, not the SDK's "
            f"(histogram {NAME!r} records each measurement through the SDK instead)",
        )
    ]


def test_the_module_imports_and_falls_back_without_the_sdk() -> None:
    code = """
import importlib.abc, sys

class NoSdk(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "opentelemetry.sdk" or name.startswith("opentelemetry.sdk."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, NoSdk())
from opentelemetry.context import Context
from opentelemetry.metrics import NoOpMeterProvider
from exitstack_otel.sdk_bridge import FastHistogram

provider = NoOpMeterProvider()
histogram = FastHistogram(provider, provider.get_meter("x"), "h", unit="s", description="", boundaries=(1.0,))
histogram.series({"route": "/"}).record(0.5)
histogram.record(0.5, {"route": "/"}, Context())
print(histogram.fast, histogram.fallback_reason)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "False opentelemetry-sdk is not installed\n"
    assert "opentelemetry.sdk" not in result.stderr


def test_record_with_a_context_keeps_an_exemplar_beside_the_merged_values() -> None:
    fast_reader, plain_reader = two_in_memory(CUMULATIVE)
    sampled = SpanContext(trace_id=1, span_id=2, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    in_span = trace.set_span_in_context(NonRecordingSpan(sampled))
    with pair([fast_reader], [plain_reader]) as made:
        made.record(0.25, ROUTES[0])
        made.histogram.record(0.75, ROUTES[0], in_span)
        made.plain.record(0.75, ROUTES[0], in_span)
        data = fast_reader.get_metrics_data()
        assert exported(data) == exported(plain_reader.get_metrics_data())
        (point,) = points_of(data)
        assert point.count == 2
        assert [(exemplar.value, exemplar.span_id) for exemplar in point.exemplars] == [(0.75, 2)]


def test_a_series_is_shared_by_equal_attributes() -> None:
    fast_reader, plain_reader = two_in_memory(CUMULATIVE)
    with pair([fast_reader], [plain_reader]) as made:
        assert made.histogram.series({"route": "/a"}) is made.histogram.series({"route": "/a"})
        assert made.histogram.series({"route": "/a"}) is not made.histogram.series({"route": "/b"})


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_gets_free_locks_and_keeps_recording() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    try:
        histogram = FastHistogram(
            provider, provider.get_meter("test"), NAME, unit="s", description="", boundaries=BOUNDARIES
        )
        series = histogram.series(ROUTES[0])
        series.record(0.5)
        # as if another thread were folding or collecting at the moment of the fork
        with series._lock, histogram._lock, warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork() with other threads alive
            child = os.fork()
            if child == 0:  # the child: must end here, whatever happens
                code = 1
                try:
                    if series._lock.locked() or histogram._lock.locked():
                        os._exit(3)  # the next fold or collection would wait forever
                    for _ in range(300):  # enough to fold, which takes the series' lock
                        series.record(0.25)
                    (point,) = points_of(reader.get_metrics_data())
                    code = 0 if point.count == 301 else 2
                finally:
                    os._exit(code)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        provider.shutdown()


@pytest.mark.parametrize("temporality", [CUMULATIVE, DELTA], ids=["cumulative", "delta"])
def test_values_appended_through_a_recorder_and_folded_equal_record(temporality: Temporality) -> None:
    fast_reader, plain_reader = two_in_memory(temporality)
    with pair([fast_reader], [plain_reader]) as made:
        recorders = [made.series(route).recorder for route in ROUTES]
        # ties of equal values of different types (the SDK keeps the first) and every bucket
        values = [0, 0.0, False, 1, 1.0, True, 0.004, *BOUNDARIES, 30, 30.0, 0.25] * 40
        for index, value in enumerate(values):
            route = ROUTES[index * len(ROUTES) // len(values)]
            recorders[ROUTES.index(route)](value)
            made.plain.record(value, route)
            if index % 97 == 0:
                made.histogram.fold()
        assert any(series._pending for series in made.histogram._series.values())
        made.histogram.fold()
        assert not any(series._pending for series in made.histogram._series.values())
        fast_points, plain_points = (
            sorted(points_of(reader.get_metrics_data()), key=lambda point: str(point.attributes))
            for reader in (fast_reader, plain_reader)
        )
        assert [fields_of(point) for point in fast_points] == [fields_of(point) for point in plain_points]
        # == takes 0 for 0.0 and True for 1: the types say which of the equal values was kept
        kept = [(type(point.min), type(point.max)) for point in fast_points]
        assert kept == [(type(point.min), type(point.max)) for point in plain_points]


def test_a_recorder_taken_before_a_fallback_stays_exact() -> None:
    if not hasattr(MeterProvider, "add_metric_reader"):
        pytest.skip("this opentelemetry-sdk cannot add a reader to a running provider")
    fast_reader, plain_reader = two_in_memory(DELTA)
    with pair([fast_reader], [plain_reader]) as made:
        recorder = made.series(ROUTES[0]).recorder
        preferred: dict[type, Aggregation] = {Histogram: ExponentialBucketHistogramAggregation()}
        made.fast_provider.add_metric_reader(InMemoryMetricReader(preferred_aggregation=preferred))
        collect_both(made, fast_reader, plain_reader)  # the switch to record()
        assert not made.histogram.fast
        # values whose sum a replay of bucket counts, min and max misses by one ulp
        for value in (0.13, 0.11, 0.3, 0.11, 0.999):
            recorder(value)
            made.plain.record(value, ROUTES[0])
        made.histogram.fold()  # hands them to record() one by one
        assert not made.series(ROUTES[0])._pending
        collect_both(made, fast_reader, plain_reader)
        for value in (0.13, 0.11, 0.3, 0.11, 0.999):
            recorder(value)
            made.plain.record(value, ROUTES[0])
        collect_both(made, fast_reader, plain_reader)  # the collection replays what is left, exactly
