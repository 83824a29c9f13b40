"""The bridge to opentelemetry-sdk: in-process histogram series exported as the SDK's own points.

This is the only module that reaches into opentelemetry-sdk's internals. A :class:`FastHistogram`
hands out :class:`~exitstack_otel.histogram_series.HistogramSeries` (one per attributes), which
aggregate in process; an observable instrument's callback runs at the start of every reader's
collection, and ours moves what accumulated into the SDK's aggregation for the same instrument and
attributes in every reader's storage, where it is exported as if each value had gone through
``record()``: the same count, bucket counts, min, max and attributes, and the same sum (adds in
another order can round the last bit differently when ``record()`` and a series feed one
aggregation, or with several readers). Merged values carry no exemplars; ``FastHistogram.record``
is there for the ones that should.

The Python SDK has no public way to do this (no MetricProducer). Everything the merge relies on is
found once, at import (``_load_sdk``), and checked once, at setup, including a merge on a private
provider compared with ``record()`` (the self-test); when anything is not as expected (no SDK,
another provider, a View that changes the aggregation, the buckets or the attribute keys) the
series forward each measurement to ``record()`` instead and the histogram says why once per
provider in the ``exitstack_otel`` log: at INFO when it follows from the application's own setup
(no SDK, another provider, a View or reader that changes the stream), since the numbers stay exact
and only cost more; at WARNING when the SDK is not what this module was written for or a merge
failed, which a newer exitstack-otel may need to handle. A View that only renames or describes the
stream keeps the merge: the aggregation is the same.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import math
import os
import threading
import time
import weakref
from bisect import bisect_left
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.util.types import AttributeValue

from .histogram_series import Batch, HistogramSeries

logger = logging.getLogger(__name__)

_INFINITY = math.inf
_Reused = dict[tuple[Any, Hashable], Any]
"""delta aggregations the SDK made for a series, by (view-instrument match, series key)"""
_HOOK_NAME = "exitstack_otel.internal.collection_hook"
_HOOK_DESCRIPTION = "Hands exitstack-otel's in-process histograms to the SDK at collection; never observes"


@dataclass(frozen=True)
class _Sdk:
    """The pieces of opentelemetry-sdk the merge uses, found once at import."""

    version: str
    meter_provider: type[Any]
    histogram: type[Any]
    consumer: type[Any]
    explicit_bucket: type[Any]
    measurement: type[Any]
    aggregation_key: Callable[[dict[str, Any]], Hashable]
    default_meter_configurator: object


def _frozenset_key(attributes: dict[str, Any]) -> Hashable:
    # how opentelemetry-sdk up to 1.44 keys a series
    return frozenset(attributes.items())


def _load_sdk() -> _Sdk | None:
    try:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics._internal import __name__ as internal_name
        from opentelemetry.sdk.metrics._internal import _view_instrument_match
        from opentelemetry.sdk.metrics._internal.aggregation import _ExplicitBucketHistogramAggregation
        from opentelemetry.sdk.metrics._internal.instrument import Histogram
        from opentelemetry.sdk.metrics._internal.measurement import Measurement
        from opentelemetry.sdk.metrics._internal.measurement_consumer import SynchronousMeasurementConsumer
        from opentelemetry.sdk.version import __version__
    except ImportError:
        return None
    import sys

    key = getattr(_view_instrument_match, "_hash_attributes", _frozenset_key)
    return _Sdk(
        version=__version__,
        meter_provider=MeterProvider,
        histogram=Histogram,
        consumer=SynchronousMeasurementConsumer,
        explicit_bucket=_ExplicitBucketHistogramAggregation,
        measurement=Measurement,
        aggregation_key=key,
        default_meter_configurator=getattr(sys.modules[internal_name], "_default_meter_configurator", None),
    )


_SDK = _load_sdk()


class _Unsupported(Exception):
    """The SDK is not set up the way the merge needs; the message says how, for the log."""

    def __init__(self, reason: str, *, level: int = logging.INFO) -> None:
        super().__init__(reason)
        self.reason = reason
        self.level = level


class FastHistogram:
    """A histogram whose series aggregate in process and merge into the SDK at collection."""

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
        self._name = name
        self._boundaries = tuple(boundaries)
        self._series: dict[Hashable, HistogramSeries] = {}
        self._lock = threading.Lock()  # guards _series, the mode switch and the merge
        self._provider = meter_provider
        self._storages: dict[Any, list[Any]] = {}
        """each reader storage seen, with its checked view-instrument matches for our histogram"""
        self._made: _Reused = {}  # reused at the next collection while they can serve
        self._fast = False
        self.fallback_reason: str | None = None
        self._bucket_advice_taken = True
        try:
            self._histogram = meter.create_histogram(
                name, unit=unit, description=description, explicit_bucket_boundaries_advisory=boundaries
            )
        except TypeError:
            # opentelemetry-api/sdk before 1.30 take no advisory: their default buckets apply
            self._histogram = meter.create_histogram(name, unit=unit, description=description)
            self._bucket_advice_taken = False
        # the API's record() takes the context (for exemplars) from 1.28 on
        self._takes_context = "context" in inspect.signature(self._histogram.record).parameters
        try:
            consumer = self._check(meter_provider)
            _hook_for(consumer, meter).add(self)
            _live.add(self)
        except _Unsupported as unsupported:
            self.fallback_reason = unsupported.reason
            _log_once(meter_provider, unsupported.level, f"{unsupported.reason} ({self._how_recorded()})")
        except Exception as error:  # an SDK unlike what this module knows must not break the app
            self.fallback_reason = f"setup failed: {error!r}"
            _log_once(meter_provider, logging.WARNING, f"{self.fallback_reason} ({self._how_recorded()})")
        else:
            self._fast = True

    @property
    def fast(self) -> bool:
        """True while measurements aggregate in process (merged at collection)."""
        return self._fast

    def series(self, attributes: Mapping[str, AttributeValue]) -> HistogramSeries:
        with self._lock:
            if not self._fast:
                return self._forwarding_series(attributes)
            assert _SDK is not None
            try:
                # the attributes exactly as record() keeps them: cleaned by the SDK's Measurement
                cleaned = _SDK.measurement(0, 0, self._histogram, Context(), attributes).attributes
                kept = dict(cleaned or {})
                key = _SDK.aggregation_key(kept)
            except Exception:  # attributes the SDK cannot key: record() gives them its own treatment
                return self._forwarding_series(attributes)
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = HistogramSeries(self._histogram, kept, key, self._boundaries)
            return series

    def _forwarding_series(self, attributes: Mapping[str, AttributeValue]) -> HistogramSeries:
        # not kept: nothing of it is ever merged
        return HistogramSeries(self._histogram, dict(attributes), None, self._boundaries, forwarding=True)

    def fold(self) -> None:
        """Fold every series' pending values: what bounds the memory of ``HistogramSeries.recorder``.

        After a fallback, each series gives what a recorder taken before the switch appended to
        ``record()`` instead.
        """
        with self._lock:
            series_list = list(self._series.values())
        for series in series_list:
            series.fold()

    def record(
        self, value: float, attributes: Mapping[str, AttributeValue], context: Context | None = None
    ) -> None:
        """The SDK's own ``record()``: for measurements that should keep an exemplar."""
        if context is not None and self._takes_context:
            self._histogram.record(value, attributes, context)
        else:
            self._histogram.record(value, attributes)

    def _how_recorded(self) -> str:
        return f"histogram {self._name!r} records each measurement through the SDK instead"

    # setup checks

    def _check(self, provider: metrics.MeterProvider) -> Any:
        if _SDK is None:
            raise _Unsupported("opentelemetry-sdk is not installed")
        if not isinstance(provider, _SDK.meter_provider):
            raise _Unsupported(f"the meter provider is a {type(provider).__qualname__}, not the SDK's")
        if not isinstance(self._histogram, _SDK.histogram):
            # a disabled or shut-down SDK provider hands out no-op meters
            raise _Unsupported(
                f"the meter made a {type(self._histogram).__qualname__}, not the SDK's histogram"
            )
        configurator = getattr(provider, "_meter_configurator", _SDK.default_meter_configurator)
        if configurator is not _SDK.default_meter_configurator:
            # a meter configurator can disable the meter, and then our collection hook never runs
            raise _Unsupported("the meter provider has a meter configurator")
        if not self._bucket_advice_taken:
            raise _Unsupported(
                f"opentelemetry-sdk {_SDK.version} takes no explicit_bucket_boundaries_advisory (1.30 does), "
                "so its default buckets apply",
                level=logging.WARNING,
            )
        problem = None if _IN_SELF_TEST.get() else _self_test()
        if problem is not None:
            raise _Unsupported(
                f"opentelemetry-sdk {_SDK.version} differs from what the merge expects: {problem}",
                level=logging.WARNING,
            )
        consumer = self._histogram._measurement_consumer
        if consumer is not getattr(provider, "_measurement_consumer", None) or not isinstance(
            consumer, _SDK.consumer
        ):
            raise _Unsupported(
                "the histogram does not feed the provider's measurement consumer", level=logging.WARNING
            )
        for storage in list(consumer._reader_storages.values()):
            self._storages[storage] = self._checked_matches(storage)
        return consumer

    def _checked_matches(self, storage: Any) -> list[Any]:
        """The storage's view-instrument matches for our histogram, if the merge can feed them all."""
        assert _SDK is not None
        # the SDK's own lookup: it applies the views and creates the (still empty) matches
        matches = list(storage._get_or_init_view_instrument_match(self._histogram))
        for match in matches:
            if match._view._attribute_keys is not None:
                raise _Unsupported(
                    f"a View keeps only the attribute keys {sorted(match._view._attribute_keys)}"
                )
            aggregation = match._aggregation
            if type(aggregation) is not _SDK.explicit_bucket:
                raise _Unsupported(f"a View or reader selects {type(aggregation).__name__.lstrip('_')}")
            if aggregation._boundaries != self._boundaries:
                raise _Unsupported(f"a View or the reader sets the buckets {list(aggregation._boundaries)}")
            if not isinstance(match._attributes_aggregation, dict):
                raise _Unsupported(
                    "the SDK keeps its series in something else than a dict", level=logging.WARNING
                )
        # a View that only renames or describes the stream keeps the same aggregation: merged too
        return matches

    # collection

    def _on_collect(self, storages: list[Any]) -> None:
        """Called by the collection hook, before a reader's storage collects."""
        with self._lock:
            if not self._fast:
                self._replay_leftovers()
                return
            try:
                targets = [self._matches_of(storage) for storage in storages]
            except _Unsupported as unsupported:  # a reader added since setup
                self._fall_back(unsupported.level, unsupported.reason)
                return
            except Exception as error:
                self._fall_back(logging.WARNING, f"the merge failed: {error!r}", error)
                return
            now = time.time_ns()
            batches = [
                (series, batch) for series in self._series.values() if (batch := series.take(now)) is not None
            ]
            if not batches:
                return
            try:
                _merge(targets, batches, self._made)
            except Exception as error:
                # _merge adds nothing until every aggregation is found, which is where an SDK unlike
                # the self-tested one would fail: the batches are then whole. (Should the adds
                # themselves fail, a batch could count twice in the readers it already reached.)
                self._fall_back(logging.WARNING, f"the merge failed: {error!r}", error)
                for series, batch in batches:
                    _replay(series, batch)

    def _on_collect_failed(self, error: Exception) -> None:
        with self._lock:
            if self._fast:
                self._fall_back(logging.WARNING, f"the merge failed: {error!r}", error)

    def _matches_of(self, storage: Any) -> list[Any]:
        matches = self._storages.get(storage)
        if matches is None:
            matches = self._storages[storage] = self._checked_matches(storage)
        return matches

    def _fall_back(self, level: int, reason: str, error: BaseException | None = None) -> None:
        """Switch to record() per measurement, keeping what accumulated. Called with _lock held."""
        self._fast = False
        self.fallback_reason = reason
        for series in self._series.values():
            series.forward()
        self._replay_leftovers()
        _log_once(self._provider, level, f"{reason} ({self._how_recorded()})", error)

    def _replay_leftovers(self) -> None:
        # a record() that began just before the switch may still have added to a series
        now = time.time_ns()
        for series in self._series.values():
            series.fold()  # values appended since the switch, through a recorder: exact
            batch = series.take(now)
            if batch is not None:
                _replay(series, batch)


def _merge(targets: list[list[Any]], batches: list[tuple[HistogramSeries, Batch]], made: _Reused) -> None:
    """Add every batch to the SDK aggregation for its attributes, in every storage and match.

    First every aggregation is found or created (the step that could meet an unexpected SDK), then
    the adds. The caller holds the measurement consumer's lock (collection runs under it), so no
    storage collects between the two steps.
    """
    found: list[tuple[Any, Any, Batch]] = []
    for matches in targets:
        for match in matches:
            for series, batch in batches:
                found.append((match, _aggregation_for(match, series, batch, made), batch))
    for match, aggregation, batch in found:
        # the match's lock too: the SDK holds it when it aggregates into a delta series that a
        # collection may discard
        with match._lock, aggregation._lock:
            counts = aggregation._value
            if counts is None:  # the usual case: the SDK empties an aggregation when it collects it
                aggregation._value = batch.counts.copy()
            else:
                aggregation._value = [old + new for old, new in zip(counts, batch.counts, strict=True)]
            aggregation._sum += batch.sum
            # min(old, new) and max(old, new), as the SDK keeps them
            if aggregation._record_min_max:
                if batch.min < aggregation._min:
                    aggregation._min = batch.min
                if batch.max > aggregation._max:
                    aggregation._max = batch.max


def _aggregation_for(match: Any, series: HistogramSeries, batch: Batch, made: _Reused) -> Any:
    """The match's aggregation for the series' attributes, made the way the SDK's record() makes it."""
    with match._lock:
        existing = match._attributes_aggregation.get(series.key)
        if existing is not None:
            return existing
        get_or_create = getattr(match, "_get_or_create_aggregation", None)
        if get_or_create is not None:  # opentelemetry-sdk 1.45.1 and newer (cardinality limit, delta reset)
            aggregation = _collected_delta_aggregation(match, series, made)
            if aggregation is not None:
                match._attributes_aggregation[series.key] = aggregation
                return aggregation
            aggregation = get_or_create(series.key, series.attributes)
            if getattr(match, "_reset_on_collect", False) and aggregation._attributes is series.attributes:
                made[match, series.key] = aggregation  # not the overflow series: that is the SDK's
        else:
            aggregation = _create_aggregation(match, series)
            match._attributes_aggregation[series.key] = aggregation
        continues_delta = getattr(match, "_previous_collection_start_nanos", None) is not None
        made_for_series = aggregation._attributes is series.attributes  # not the overflow series
        if made_for_series and not continues_delta and batch.since_ns < aggregation._start_time_unix_nano:
            # the SDK starts a series at its first record(); ours reach it at collection
            aggregation._start_time_unix_nano = batch.since_ns
            aggregation._previous_collection_start_nano = batch.since_ns
    assert _SDK is not None
    if type(aggregation) is not _SDK.explicit_bucket or aggregation._boundaries != series.boundaries:
        raise TypeError(f"the SDK made a {type(aggregation).__name__} for a merged series")
    return aggregation


def _collected_delta_aggregation(match: Any, series: HistogramSeries, made: _Reused) -> Any:
    """The series' aggregation that the last delta collection took out, if it can serve again.

    The SDK drops a delta stream's aggregations at each collection and makes new ones on the next
    record(); making one (its exemplar reservoir has a bucket per boundary) costs more than merging
    into it, so that for many series it would dominate a collection (benchmarks/RESULTS.md). One
    that was collected last time is as new: empty, its exemplars taken, its window starting at that
    collection. Called with match._lock held.
    """
    aggregation = made.get((match, series.key))
    if aggregation is None:
        return None
    if (
        aggregation._value is None
        and aggregation._previous_collection_start_nano == match._previous_collection_start_nanos
        and len(match._attributes_aggregation) < match._cardinality_limit
    ):
        return aggregation
    del made[match, series.key]  # idle for a whole collection, or over the limit: the SDK makes one
    return None


def _create_aggregation(match: Any, series: HistogramSeries) -> Any:
    # what the SDK's consume_measurement does before 1.45.1: the view's aggregation unless it is
    # the default, then the reader's, with the view's exemplar reservoir from 1.28 on
    from opentelemetry.sdk.metrics._internal.aggregation import DefaultAggregation

    factory = match._view._aggregation
    if isinstance(factory, DefaultAggregation):
        factory = match._instrument_class_aggregation[match._instrument.__class__]
    start = time.time_ns()
    if hasattr(match._view, "_exemplar_reservoir_factory"):
        return factory._create_aggregation(
            match._instrument, series.attributes, match._view._exemplar_reservoir_factory, start
        )
    return factory._create_aggregation(match._instrument, series.attributes, start)


def _replay(series: HistogramSeries, batch: Batch) -> None:
    """Give a batch to the SDK through record(), when the merge cannot.

    The values themselves are gone: this records the batch's min and max and, for the others, one
    value per measurement inside its bucket, spread so that their total comes as close to the
    batch's sum as floating point allows. Count, bucket counts, min and max stay exact.
    """
    boundaries = series.boundaries
    counts = list(batch.counts)
    fixed = [batch.min] if sum(counts) == 1 else [batch.min, batch.max]
    for value in fixed:
        counts[bisect_left(boundaries, value)] -= 1
    ranges = []
    for index, count in enumerate(counts):
        if count:
            low = (
                batch.min if index == 0 else max(batch.min, math.nextafter(boundaries[index - 1], _INFINITY))
            )
            high = batch.max if index == len(boundaries) else min(batch.max, boundaries[index])
            ranges.append((count, low, high))
    rest = batch.sum - math.fsum(fixed)
    lowest = math.fsum(count * low for count, low, _ in ranges)
    highest = math.fsum(count * high for count, _, high in ranges)
    share = 0.0 if highest == lowest else min(1.0, max(0.0, (rest - lowest) / (highest - lowest)))
    record = series.histogram.record
    for value in fixed:
        record(value, series.attributes)
    for count, low, high in ranges:
        value = low + share * (high - low)
        for _ in range(count):
            record(value, series.attributes)


# the collection hook: one observable instrument per measurement consumer (that is, per provider)


class _CollectionHook:
    def __init__(self, consumer: Any) -> None:
        self._consumer = weakref.ref(consumer)  # the consumer holds us through the instrument
        self._histograms: list[FastHistogram] = []
        self._lock = threading.Lock()

    def add(self, histogram: FastHistogram) -> None:
        with self._lock:
            self._histograms.append(histogram)

    def __call__(self, options: CallbackOptions) -> Iterable[Observation]:
        consumer = self._consumer()
        with self._lock:
            histograms = list(self._histograms)
        try:
            # the collection in progress holds the consumer's lock, so the storages stay put
            storages = list(consumer._reader_storages.values()) if consumer is not None else []
        except Exception as error:
            for histogram in histograms:
                histogram._on_collect_failed(error)
        else:
            for histogram in histograms:
                histogram._on_collect(storages)
        # no observation: the SDK then makes no stream for this instrument, and exports nothing of it
        return ()


_hooks: weakref.WeakKeyDictionary[Any, _CollectionHook] = weakref.WeakKeyDictionary()
_hooks_lock = threading.Lock()


def _hook_for(consumer: Any, meter: metrics.Meter) -> _CollectionHook:
    with _hooks_lock:
        hook = _hooks.get(consumer)
        if hook is None:
            hook = _hooks[consumer] = _CollectionHook(consumer)
            # the SDK registers an observable instrument's callbacks only the first time a name is
            # used on a meter, hence one hook per consumer rather than one per histogram
            meter.create_observable_gauge(_HOOK_NAME, callbacks=[hook], description=_HOOK_DESCRIPTION)
        return hook


# the setup self-test


_self_test_result: list[str | None] = []
_self_test_lock = threading.Lock()
_IN_SELF_TEST: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "exitstack_otel_self_test", default=False
)


def _self_test() -> str | None:
    """Merge into a private provider and compare with record(): None when both export the same."""
    with _self_test_lock:
        if not _self_test_result:
            token = _IN_SELF_TEST.set(True)
            try:
                _self_test_result.append(_run_self_test())
            except Exception as error:
                _self_test_result.append(repr(error))
            finally:
                _IN_SELF_TEST.reset(token)
        return _self_test_result[0]


def _run_self_test() -> str | None:
    from opentelemetry.sdk.metrics import Histogram, MeterProvider
    from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader

    readers = [
        InMemoryMetricReader(preferred_temporality={Histogram: temporality})
        for temporality in (AggregationTemporality.CUMULATIVE, AggregationTemporality.DELTA)
    ]
    provider = MeterProvider(metric_readers=readers, shutdown_on_exit=False)
    try:
        meter = provider.get_meter("exitstack_otel.self_test")
        boundaries = (1.0, 10.0)
        merged = FastHistogram(provider, meter, "merged", unit="s", description="", boundaries=boundaries)
        if not merged.fast:
            return merged.fallback_reason
        recorded = meter.create_histogram(
            "recorded", unit="s", explicit_bucket_boundaries_advisory=boundaries
        )
        attributes: dict[str, AttributeValue] = {"name": "x", "count": 3, "on": True}
        series = merged.series(attributes)
        # rounds of collections, one with nothing new: a delta series then goes and comes back
        for round_, values in enumerate(((0.5, 3, 3.25, 20, 10), (0.75,), (), (0.25, 12))):
            for value in values:
                series.record(value)
                recorded.record(value, attributes)
            for storage in merged._storages:
                made_by_record = storage._get_or_init_view_instrument_match(recorded)[
                    0
                ]._attributes_aggregation
                if values and series.key not in made_by_record:
                    return "record() keys a series differently"
            for reader, cumulative in zip(readers, (True, False), strict=True):
                # a merged series starts when it was made, a recorded one at its first value;
                # after the first collection, delta windows start at the one before, both alike
                problem = _same_points(reader.get_metrics_data(), earlier_start=cumulative or round_ == 0)
                if problem is not None:
                    return problem
        return None
    finally:
        provider.shutdown()


def _same_points(data: Any, *, earlier_start: bool) -> str | None:
    points = {
        metric.name: metric.data.data_points
        for resource in (data.resource_metrics if data else ())
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    if set(points) not in ({"merged", "recorded"}, set()) or len(points.get("merged", ())) > 1:
        return f"exported {points!r}"
    if not points:
        return None
    fields = ("attributes", "start_time_unix_nano", "count", "sum", "bucket_counts", "explicit_bounds")
    for field in (*fields, "min", "max"):
        got, want = getattr(points["merged"][0], field), getattr(points["recorded"][0], field)
        if got != want and not (earlier_start and field == "start_time_unix_nano" and got <= want):
            return f"merged {field} {got!r}, record() gives {want!r}"
    return None


# logging each reason once per provider


_logged: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()
_logged_lock = threading.Lock()


def _log_once(provider: object, level: int, message: str, error: BaseException | None = None) -> None:
    if _IN_SELF_TEST.get():
        return  # the self-test's outcome is logged by the histogram that asked for it
    with _logged_lock:
        try:
            seen = _logged.setdefault(provider, set())
        except TypeError:  # a provider that cannot be weakly referenced: log every time
            seen = set()
        if message in seen:
            return
        seen.add(message)
    logger.log(level, "%s", message, exc_info=error)


# after a fork, the child's copies of our locks may be held by a thread that no longer exists


_live: weakref.WeakSet[FastHistogram] = weakref.WeakSet()


def _new_locks_in_child() -> None:
    global _hooks_lock, _self_test_lock, _logged_lock
    _hooks_lock, _self_test_lock, _logged_lock = threading.Lock(), threading.Lock(), threading.Lock()
    for hook in list(_hooks.values()):
        hook._lock = threading.Lock()
    for histogram in list(_live):
        histogram._lock = threading.Lock()
        for series in histogram._series.values():
            series.new_lock_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_locks_in_child)
