"""The fold (a sort and a bisect per bucket) leaves a series as recording each value one by one
would: the same bucket counts, and the sum, min and max the SDK's own aggregation keeps. (Values
the SDK refuses, NaN, infinities and negatives, are tests/test_sdk_bridge.py's.)"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from exitstack_otel.histogram_series import HistogramSeries

BOUNDARIES = (0.0, 0.005, 0.01, 0.1, 1.0, 10.0)
PROVIDER = MeterProvider()
HISTOGRAM = PROVIDER.get_meter("test").create_histogram("exitstack.test.fold")


def _typed(value: object) -> tuple[object, ...]:
    # the sum, min and max with their types (an int sum stays an int, -0.0 stays -0.0)
    sign = math.copysign(1.0, value) if isinstance(value, float) and not math.isnan(value) else None
    return type(value), repr(value), sign


def _folded(batches: list[list[Any]]) -> tuple[object, ...]:
    series = HistogramSeries(HISTOGRAM, {}, "key", BOUNDARIES)
    for batch in batches:
        series._pending.extend(batch)
        series._fold()
    return tuple(series._counts), _typed(series._sum), _typed(series._min), _typed(series._max)


def _one_by_one(batches: list[list[Any]]) -> tuple[object, ...]:
    """What the SDK's explicit-bucket aggregation keeps, value by value."""
    counts = [0] * (len(BOUNDARIES) + 1)
    total: Any = 0
    low: Any = math.inf
    high: Any = -math.inf
    for value in (value for batch in batches for value in batch):
        counts[bisect_left(BOUNDARIES, value)] += 1  # bucket i: boundaries[i-1] < value <= boundaries[i]
        total += value
        low = min(low, value)
        high = max(high, value)
    return tuple(counts), _typed(total), _typed(low), _typed(high)


floats = st.one_of(
    st.floats(min_value=0.0, max_value=20.0),
    st.sampled_from([0.0, -0.0, *BOUNDARIES, 0.0050000001, 1e-300]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(floats, min_size=1, max_size=40), min_size=1, max_size=4))
def test_float_batches_fold_as_recorded_one_by_one(batches: list[list[float]]) -> None:
    assert _folded(batches) == _one_by_one(batches)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.lists(st.integers(min_value=0, max_value=200), min_size=1, max_size=40), min_size=1, max_size=4
    )
)
def test_int_batches_fold_as_recorded_one_by_one(batches: list[list[int]]) -> None:
    assert _folded(batches) == _one_by_one(batches)


@pytest.mark.parametrize(
    "batch",
    [[0.5, 1], [1, 0.5], [2**60], [0.25, 0.25, -0.0, 0.0, 1.0, 1]],
)
def test_unusual_batches_fold_as_recorded_one_by_one(batch: list[Any]) -> None:
    assert _folded([batch]) == _one_by_one([batch])
    assert _folded([batch[:1], batch[1:]]) == _one_by_one([batch[:1], batch[1:]])


def _recorded_count(reader: InMemoryMetricReader) -> int:
    """How many values the SDK's own record() took, over every point the reader collects."""
    data = reader.get_metrics_data()
    points: list[Any] = [
        point
        for resource in (data.resource_metrics if data else ())
        for scope in resource.scope_metrics
        for metric in scope.metrics
        for point in metric.data.data_points
    ]
    return sum(int(point.count) for point in points)


def test_a_forwarding_series_hands_each_value_to_record_at_once() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    try:
        histogram = provider.get_meter("test").create_histogram("exitstack.test.forward")
        series = HistogramSeries(histogram, {"route": "/"}, None, BOUNDARIES, forwarding=True)
        assert series.forwarding
        series.record(0.5)
        series.recorder(0.25)
        assert not series._pending
        assert series.take(0) is None  # nothing kept in process
        assert _recorded_count(reader) == 2
    finally:
        provider.shutdown()


def test_forward_sends_later_values_and_a_recorder_s_on_the_next_fold() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    try:
        histogram = provider.get_meter("test").create_histogram("exitstack.test.forward")
        series = HistogramSeries(histogram, {"route": "/"}, "key", BOUNDARIES)
        recorder = series.recorder  # taken while the series aggregates in process
        series.record(0.5)
        assert _recorded_count(reader) == 0
        series.forward()
        recorder(0.25)  # still a bare append
        assert series._pending == [0.5, 0.25]
        series.record(0.75)  # takes the pending values along
        assert not series._pending
        assert _recorded_count(reader) == 3
        recorder(1.5)
        series.fold()
        assert not series._pending
        assert _recorded_count(reader) == 4
        assert type(series) is HistogramSeries
    finally:
        provider.shutdown()


def test_a_forwarding_series_takes_no_lock_and_no_value_twice() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    try:
        histogram = provider.get_meter("test").create_histogram("exitstack.test.forward")
        series = HistogramSeries(histogram, {"route": "/"}, None, BOUNDARIES, forwarding=True)
        threads_values = 4, 2000

        def record_many() -> None:
            for _ in range(threads_values[1]):
                series.record(0.5)

        # the lock held, as a thread of the parent may have held it when the process forked
        with series._lock:
            threads = [threading.Thread(target=record_many) for _ in range(threads_values[0])]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=30)
            assert not any(thread.is_alive() for thread in threads)
        assert not series._pending
        assert _recorded_count(reader) == threads_values[0] * threads_values[1]
    finally:
        provider.shutdown()
