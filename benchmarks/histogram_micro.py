"""Per-record cost of a merged HistogramSeries against the SDK's Histogram.record, same run.

``python -m benchmarks.histogram_micro`` prints medians of several batches: one record on our
series (and on a lock-free copy of it, to show what the lock costs), one ``Histogram.record`` with
the same four attributes, their ratio, and the cost of one collection with 1,000 series.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Sequence

from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader

from exitstack_otel import semconv
from exitstack_otel.sdk_bridge import FastHistogram

_ATTRIBUTES = {
    semconv.STACK_NAME: "fastapi_middleware_astack",
    semconv.CALLBACK_NAME: "_Resource",
    semconv.CALLBACK_KIND: semconv.KIND_ASYNC_CONTEXT,
    semconv.CALLBACK_OUTCOME: semconv.OUTCOME_OK,
}
_BOUNDARIES = semconv.DURATION_BUCKETS
_VALUES = [0.00003 * (index % 700) for index in range(1000)]


class _DirectSeries:
    """Bucket counts updated in record() itself, the design not taken: with a lock per record
    (safe with a collecting thread and on free-threaded Python) or without (safe on neither)."""

    def __init__(self, *, locked: bool) -> None:
        self.counts = [0] * (len(_BOUNDARIES) + 1)
        self.sum = 0.0
        self.min = float("inf")
        self.max = float("-inf")
        self.lock = threading.Lock()
        self.record = self.record_locked if locked else self.record_unlocked

    def record_locked(self, value: float) -> None:
        if 0 <= value < float("inf"):
            index = bisect_left(_BOUNDARIES, value)
            with self.lock:
                self.counts[index] += 1
                self.sum += value
                if value < self.min:
                    self.min = value
                if value > self.max:
                    self.max = value

    def record_unlocked(self, value: float) -> None:
        if 0 <= value < float("inf"):
            self.counts[bisect_left(_BOUNDARIES, value)] += 1
            self.sum += value
            if value < self.min:
                self.min = value
            if value > self.max:
                self.max = value


def _per_record_us(record: Callable[[float], None], rounds: int) -> float:
    values = _VALUES
    start = time.perf_counter_ns()
    for _ in range(rounds):
        for value in values:
            record(value)
    return (time.perf_counter_ns() - start) / (rounds * len(values)) / 1000


def _collection_ms(
    series_count: int, repeats: int, temporality: AggregationTemporality
) -> tuple[float, float, float]:
    """One collection with ``series_count`` series that each got a value: (merge, fast, plain)."""
    preferred: dict[type, AggregationTemporality] = {Histogram: temporality}
    fast_reader = InMemoryMetricReader(preferred_temporality=preferred)
    plain_reader = InMemoryMetricReader(preferred_temporality=preferred)
    fast_provider = MeterProvider(metric_readers=[fast_reader], shutdown_on_exit=False)
    plain_provider = MeterProvider(metric_readers=[plain_reader], shutdown_on_exit=False)
    try:
        fast = FastHistogram(
            fast_provider,
            fast_provider.get_meter("bench"),
            "h",
            unit="s",
            description="",
            boundaries=_BOUNDARIES,
        )
        assert fast.fast, fast.fallback_reason
        plain = plain_provider.get_meter("bench").create_histogram(
            "h", unit="s", explicit_bucket_boundaries_advisory=_BOUNDARIES
        )
        attributes = [{**_ATTRIBUTES, "route": f"/r{index}"} for index in range(series_count)]
        series = [fast.series(each) for each in attributes]
        merge, fast_total, plain_total = [], [], []
        storages = list(fast_provider._measurement_consumer._reader_storages.values())
        for _ in range(repeats):
            for one in series:
                one.record(0.002)
            start = time.perf_counter_ns()
            fast._on_collect(storages)  # the merge alone, as the collection hook runs it
            merge.append(time.perf_counter_ns() - start)
            fast_reader.get_metrics_data()  # exports what was merged; the next merge starts empty
            for one in series:
                one.record(0.002)
            start = time.perf_counter_ns()
            fast_reader.get_metrics_data()
            fast_total.append(time.perf_counter_ns() - start)
            for each in attributes:
                plain.record(0.002, each)
            start = time.perf_counter_ns()
            plain_reader.get_metrics_data()
            plain_total.append(time.perf_counter_ns() - start)
        return tuple(statistics.median(each) / 1e6 for each in (merge, fast_total, plain_total))  # type: ignore[return-value]
    finally:
        fast_provider.shutdown()
        plain_provider.shutdown()


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.histogram_micro", description=__doc__)
    parser.add_argument("--rounds", type=int, default=200, help="1,000 records per round")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--series", type=int, default=1000)
    args = parser.parse_args(argv)

    provider = MeterProvider(metric_readers=[InMemoryMetricReader()], shutdown_on_exit=False)
    try:
        fast = FastHistogram(
            provider, provider.get_meter("bench"), "fast", unit="s", description="", boundaries=_BOUNDARIES
        )
        assert fast.fast, fast.fallback_reason
        series = fast.series(_ATTRIBUTES)
        histogram = provider.get_meter("bench").create_histogram(
            "plain", unit="s", explicit_bucket_boundaries_advisory=_BOUNDARIES
        )
        sdk_rounds = max(1, args.rounds // 20)  # the SDK is ~40 times slower: fewer rounds, same order
        measures: dict[str, Callable[[], float]] = {
            "series": lambda: _per_record_us(series.record, args.rounds),
            "locked": lambda: _per_record_us(_DirectSeries(locked=True).record, args.rounds),
            "unlocked": lambda: _per_record_us(_DirectSeries(locked=False).record, args.rounds),
            "sdk": lambda: _per_record_us(lambda value: histogram.record(value, _ATTRIBUTES), sdk_rounds),
        }
        # interleaved batches, so that a noisy moment touches every variant alike
        found: dict[str, list[float]] = {name: [] for name in measures}
        for _ in range(args.repeats):
            for name, measure in measures.items():
                found[name].append(measure())
        series_us, locked_us, unlocked_us, sdk_us = (statistics.median(found[name]) for name in measures)
    finally:
        provider.shutdown()
    lines = [
        f"HistogramSeries.record                  {series_us:8.3f} us (append; folded every 256 values)",
        f"  counts updated in record(), a lock each {locked_us:8.3f} us",
        f"  counts updated in record(), no lock     {unlocked_us:8.3f} us (not thread-safe)",
        f"Histogram.record (SDK, 4 attributes)    {sdk_us:8.3f} us",
        f"ratio HistogramSeries / SDK             {series_us / sdk_us:8.4f}",
    ]
    for temporality in (AggregationTemporality.CUMULATIVE, AggregationTemporality.DELTA):
        merge_ms, fast_ms, plain_ms = _collection_ms(args.series, args.repeats, temporality)
        lines += [
            f"{temporality.name.lower()}: {args.series} series with a value each, one collection:",
            f"  the merge                             {merge_ms:8.3f} ms",
            f"  the whole collection, merge included  {fast_ms:8.3f} ms",
            f"  the SDK's collection of record()s     {plain_ms:8.3f} ms",
        ]
    report = "\n".join(lines)
    print(report)
    return report


if __name__ == "__main__":
    main()
