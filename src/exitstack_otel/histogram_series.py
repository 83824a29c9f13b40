"""One histogram series aggregated in process: the part of a histogram that runs per request.

``Histogram.record`` is costly on the hot path (the SDK cleans and hashes the attributes, takes locks
and runs the exemplar filter on every call). A :class:`HistogramSeries` keeps the bucket counts, sum,
min and max of one (instrument, attributes) series itself, for a small part of that cost (the
figures are in benchmarks/RESULTS.md, "Costs the code relies on"): recording appends the value to a
list, and folding the pending values into the counts takes a sort and a bisect per bucket, in C
through the standard library. :meth:`HistogramSeries.take` hands what accumulated to whoever
exports it (``sdk_bridge`` merges it into the SDK's own aggregation at collection).

This module knows nothing of the SDK's internals: it calls the public ``Histogram.record()`` only
for values the SDK should log and drop, and once the series forwards (:meth:`forward`) for every
value.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from functools import reduce
from operator import add
from typing import Any

from opentelemetry import metrics

logger = logging.getLogger(__name__)

_INFINITY = math.inf
FOLD_AT = 256
"""values a series holds before ``record()`` folds them into its counts: bounds its memory"""


@dataclass(slots=True)
class Batch:
    """What one series accumulated between two collections."""

    counts: list[int]
    sum: float
    min: float
    max: float
    since_ns: int
    """when the series began accumulating this batch: a sensible start for a new cumulative point"""


class HistogramSeries:
    """One (instrument, attributes) series; record() is the hot path: an append and a length check."""

    # record() only appends to a list: list.append is atomic on every CPython, free-threaded
    # builds included (they lock the list itself). Every FOLD_AT values, and at collection,
    # the values are folded into bucket counts, sum, min and max under the series' lock, so no
    # read-modify-write ever races. Taking that lock on every record() would cost twice as much.
    __slots__ = (
        "_counts",
        "_fold_at",
        "_forwarding",
        "_lock",
        "_max",
        "_min",
        "_pending",
        "_since_ns",
        "_sum",
        "attributes",
        "boundaries",
        "histogram",
        "key",
    )

    def __init__(
        self,
        histogram: metrics.Histogram,
        attributes: dict[str, Any],
        key: Hashable,
        boundaries: tuple[float, ...],
        *,
        forwarding: bool = False,
    ) -> None:
        self.histogram = histogram
        """the SDK histogram the series belongs to: its record() takes what the series cannot"""
        self.attributes = attributes
        self.key = key
        """the attributes as the SDK keys its series (None for a forwarding series)"""
        self.boundaries = boundaries
        self._lock = threading.Lock()
        self._pending: list[float] = []
        self._counts = [0] * (len(boundaries) + 1)
        self._sum: float = 0
        self._min = _INFINITY
        self._max = -_INFINITY
        self._since_ns = time.time_ns()
        self._forwarding = False
        self._fold_at = FOLD_AT
        if forwarding:
            self.forward()

    def record(self, value: float) -> None:
        pending = self._pending
        pending.append(value)
        # _fold_at rather than the FOLD_AT global: the same cost, and a forwarding series sets it
        # to 1 so that every value goes on to the SDK at once, with no check of its own here
        if len(pending) >= self._fold_at:
            self.fold()

    @property
    def recorder(self) -> Callable[[float], None]:
        """``record`` without the check that folds: for callers that call ``fold`` often enough
        themselves (one check per unwind instead of one per callback)."""
        return self.record if self._forwarding else self._pending.append

    @property
    def forwarding(self) -> bool:
        """True once every value goes through the SDK's ``record()``."""
        return self._forwarding

    def forward(self) -> None:
        """From now on, hand every value to the SDK's ``record()`` (for good: there is no way back).

        Values already folded stay in the counts for ``take``; values a recorder taken earlier
        appends go to ``record()`` at the next ``fold``.
        """
        with self._lock:
            self._forwarding = True
            self._fold_at = 1

    def fold(self) -> None:
        """Fold the pending values into the counts, or give them to ``record()`` when forwarding."""
        if not self._pending:
            return
        if not self._forwarding:
            with self._lock:
                if not self._forwarding:  # forward() may have run while this waited for the lock
                    self._fold()
                    return
        self._record_pending()

    def take(self, now_ns: int) -> Batch | None:
        """What accumulated since the last take, None for nothing; the series starts again at now_ns.

        Once forwarding, pending values are left to ``fold``, which gives them to ``record()``.
        """
        if not self._pending and self._max == -_INFINITY:  # every accepted value raises max
            return None
        with self._lock:
            if not self._forwarding:
                self._fold()
            if self._max == -_INFINITY:
                return None
            batch = Batch(self._counts, self._sum, self._min, self._max, self._since_ns)
            self._counts = [0] * len(batch.counts)
            self._sum = 0
            self._min = _INFINITY
            self._max = -_INFINITY
            self._since_ns = now_ns
        return batch

    def new_lock_after_fork(self) -> None:
        """In a forked child: the copied lock may be held by a thread that does not exist there."""
        self._lock = threading.Lock()

    def _fold(self) -> None:
        """Move the pending values into the counts. Called with _lock held."""
        pending = self._pending
        # only this method removes values before the series forwards (_record_pending after),
        # under the lock, and only from the front: values appended meanwhile stay for the next fold
        taken = len(pending)
        values = pending[:taken]
        del pending[:taken]
        if not values:
            return
        counts, boundaries = self._counts, self.boundaries
        try:
            # The usual batch: numbers in [0, inf), no NaN (which would make the sum NaN). Then C
            # does the work: one sort, a bisect per bucket, the sum added in record()'s order.
            ordered = sorted(values)
            low, high = ordered[0], ordered[-1]
            total = reduce(add, values, self._sum)
            fast = low >= 0 and high < _INFINITY and total == total
        except TypeError:
            fast = False
        if fast:
            counted = 0
            for index, boundary in enumerate(
                boundaries
            ):  # bucket i: boundaries[i-1] < value <= boundaries[i]
                upto = bisect_right(ordered, boundary, counted)
                if upto != counted:
                    counts[index] += upto - counted
                    counted = upto
            counts[-1] += taken - counted
            self._sum = total
            # the SDK keeps min(old, new) and max(old, new), the earlier one on a tie (0 == 0.0): the
            # sort is stable, so the first of the equal lowest and of the equal highest
            high = ordered[bisect_left(ordered, high)]
            self._min = min(self._min, low)
            self._max = max(self._max, high)
            return
        total, low, high = self._sum, self._min, self._max
        for value in values:
            try:
                accepted = 0 <= value < _INFINITY  # what record() accepts (NaN fails both)
            except TypeError:
                logger.warning("dropped %r recorded on a histogram series: not a number", value)
                continue
            if accepted:
                counts[bisect_left(boundaries, value)] += 1
                total += value
                if value < low:
                    low = value
                if value > high:
                    high = value
            else:
                self.histogram.record(value, self.attributes)  # the SDK logs and drops it
        self._sum, self._min, self._max = total, low, high

    def _record_pending(self) -> None:
        """Give the pending values to the SDK's record(), exactly, in order. Only once forwarding.

        No lock: a forwarding series' record() comes here for every value, which a lock would
        serialise (and leave held in a forked child). ``list.pop`` is atomic, so threads draining
        at once never take a value twice; usually there is one value, at most what recorders
        appended since the last fold.
        """
        pending = self._pending
        record = self.histogram.record
        attributes = self.attributes
        while pending:
            try:
                value = pending.pop(0)
            except IndexError:  # another thread took the last one
                return
            record(value, attributes)
