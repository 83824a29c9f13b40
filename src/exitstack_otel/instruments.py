"""The five instruments of docs/telemetry.md for one meter provider, and the counts they read.

Nothing here runs per request except the adds on ``Count.value`` and ``HistogramSeries.record``:
pushes and unwinds in progress are plain integers that observable instruments read at collection
time, and histogram points are aggregated by ``histogram_series`` and handed to the SDK then
(``sdk_bridge``).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.util.types import AttributeValue

from . import semconv
from .sdk_bridge import FastHistogram
from .version import __version__

Attributes = Mapping[str, AttributeValue]

FOLD_EVERY = 4096
"""Callback durations appended, over all series, between two folds."""


class Count:
    __slots__ = ("attributes", "value")

    def __init__(self, attributes: Attributes) -> None:
        self.value = 0
        self.attributes = attributes


class Instruments:
    """The instruments of one meter provider, shared by every ``Telemetry`` that uses it."""

    def __init__(self, meter_provider: metrics.MeterProvider) -> None:
        meter = meter_provider.get_meter(semconv.SCOPE_NAME, __version__)
        self.pushed: dict[tuple[str, str, str], Count] = {}
        self.active: dict[str, Count] = {}
        self.unfolded = 0
        """Values appended through recorders since the last fold, as reported to ``appended``."""

        def histogram(name: str, unit: str, description: str, boundaries: tuple[float, ...]) -> FastHistogram:
            return FastHistogram(
                meter_provider, meter, name, unit=unit, description=description, boundaries=boundaries
            )

        self.callback_duration = histogram(
            semconv.CALLBACK_DURATION,
            semconv.UNIT_SECONDS,
            "Time one exit callback took to run.",
            semconv.DURATION_BUCKETS,
        )
        self.unwind_duration = histogram(
            semconv.UNWIND_DURATION,
            semconv.UNIT_SECONDS,
            "Time from the start of a stack's exit to the end of its last callback.",
            semconv.DURATION_BUCKETS,
        )
        self.unwind_callbacks = histogram(
            semconv.UNWIND_CALLBACKS,
            semconv.UNIT_CALLBACK,
            "Exit callbacks run by one unwind.",
            semconv.CALLBACK_COUNT_BUCKETS,
        )
        meter.create_observable_counter(
            semconv.CALLBACK_PUSHED,
            callbacks=[self._observe_pushed],
            unit=semconv.UNIT_CALLBACK,
            description="Exit callbacks pushed onto a stack.",
        )
        meter.create_observable_up_down_counter(
            semconv.UNWIND_ACTIVE,
            callbacks=[self._observe_active],
            unit=semconv.UNIT_UNWIND,
            description="Unwinds started and not yet finished.",
        )

    def appended(self, count: int) -> None:
        """``count`` values went through recorders (which never fold): fold once there are
        ``FOLD_EVERY``. Each unwind reports its own; the count is racy, only a hint."""
        self.unfolded += count
        if self.unfolded >= FOLD_EVERY:
            self.fold()

    def fold(self) -> None:
        """Aggregates what the recorders appended, so that memory stays bounded however rarely a
        reader collects."""
        self.unfolded = 0
        self.callback_duration.fold()
        self.unwind_duration.fold()
        self.unwind_callbacks.fold()

    # setdefault: one step under the GIL, so that loops in two threads meeting the same series for
    # the first time both get the Count that is read, never one that is replaced and lost
    def pushed_count(self, key: tuple[str, str, str]) -> Count:
        found = self.pushed.get(key)
        if found is None:
            stack_name, name, kind = key
            found = self.pushed.setdefault(
                key,
                Count(
                    {semconv.STACK_NAME: stack_name, semconv.CALLBACK_NAME: name, semconv.CALLBACK_KIND: kind}
                ),
            )
        return found

    def active_count(self, stack_name: str) -> Count:
        found = self.active.get(stack_name)
        if found is None:
            found = self.active.setdefault(stack_name, Count({semconv.STACK_NAME: stack_name}))
        return found

    def _observe_pushed(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(count.value, count.attributes) for count in list(self.pushed.values())]

    def _observe_active(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(count.value, count.attributes) for count in list(self.active.values())]


# One set of instruments per meter provider: a second registration of an observable instrument
# would be ignored by the SDK, and its counts lost. Event loops in several threads may meet a new
# provider at the same moment, so creation is locked; the lock is taken only on a cache miss.
_by_provider: MutableMapping[Any, Instruments] = weakref.WeakKeyDictionary()
_creating = threading.Lock()


def instruments_for(meter_provider: metrics.MeterProvider) -> Instruments:
    found = _by_provider.get(meter_provider)
    if found is None:
        with _creating:
            found = _by_provider.get(meter_provider)
            if found is None:
                found = _by_provider[meter_provider] = Instruments(meter_provider)
    return found
