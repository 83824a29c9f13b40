"""Which failed callbacks are recorded in full: a failure storm's first few, then a trickle.

When a database is down every request's cleanup fails the same way. Each failure recorded in full
(a span for it and for its unwind, the exception event with its formatted traceback, a log record)
costs a request some 200 µs, ten times what the rest of the telemetry does; yet the thousandth
identical traceback tells nobody anything the first did not. So each kind of failure, one
(stack, callback name, kind, outcome, ``error.type``), has a budget: ``BURST`` at once, then one
every ``INTERVAL_SECONDS``, refilled at that rate while the failures stop. The metrics still count
every failure; what the budget declines goes into the same histogram series through a recorder,
as a callback that went well does, and into the cleanup log's "left out" count.

The budget is a generic cell rate algorithm (a token bucket kept as the one time from which the
next failure is allowed): a declined failure costs one comparison of the callback's end time,
which the stack has read anyway. Threads sharing a budget may race on it; the worst that does is
let a failure or two more through.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from opentelemetry.util.types import AttributeValue

Attributes = Mapping[str, AttributeValue]

BURST = 10
"""Failures of one kind recorded in full at the start of a storm, with nothing in between."""

INTERVAL_SECONDS = 1.0
"""Then one in full every this many seconds: a fresh trace a second to look at in Tempo."""

MAX_KINDS = 4096
"""Kinds with a budget of their own per ``Telemetry``; any further ones share one."""


class Budget:
    """``burst`` failures at once, then one every ``interval`` seconds (times are ``perf_counter``)."""

    __slots__ = ("_debt", "_interval", "allowed_from")

    def __init__(self, burst: int = BURST, interval: float = INTERVAL_SECONDS) -> None:
        self._interval = interval
        self._debt = (burst - 1) * interval
        """how far ahead of now the allowed failures may run"""
        self.allowed_from = float("-inf")
        """a failure that ended before this is declined"""

    def take(self, now: float) -> bool:
        """Whether the failure that ended at ``now`` is recorded in full; it uses up its share if so."""
        allowed_from = self.allowed_from
        if now < allowed_from:
            return False
        # the theoretical time of the next failure at the steady rate, never behind now
        due = max(allowed_from + self._debt, now) + self._interval
        self.allowed_from = due - self._debt
        return True


class FailureKind:
    """One (callback info, outcome, error type): its attributes, its budget and its fast recorder."""

    __slots__ = ("attributes", "budget", "record")

    def __init__(self, attributes: Attributes, budget: Budget, record: Callable[[float], None]) -> None:
        self.attributes = attributes
        self.budget = budget
        self.record = record
        """a bare append into the failure's histogram series, folded as the ok path's are"""
