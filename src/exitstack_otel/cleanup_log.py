"""Cleanup trouble in the logs: a record for every failed callback, a warning for a hung one.

Both go through the ``exitstack_otel`` logger. A failure is logged with its span's context made
current, so OpenTelemetry's logging handler, where installed, turns the record into a log record of
the same trace; the ids are in the message too. Failures are rate-limited per ``Telemetry`` (a
failure storm logs ``FAILURES_PER_WINDOW`` records a window, then says how many it left out when
the window ends, or at shutdown if that comes first).
Hung callbacks are found by a watcher thread that looks at the unwinds in progress once a second,
so the request path pays two attribute writes per callback and nothing else.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace

logger = logging.getLogger(__name__)

FAILURES_PER_WINDOW = 20
WINDOW_SECONDS = 60.0
WATCH_INTERVAL_SECONDS = 1.0


def _log_left_out(summary: tuple[int, float, int] | None) -> None:
    if summary is None:
        return
    left_out, seconds, per_window = summary
    logger.warning(
        "exitstack-otel left %d more failed cleanup callbacks out of the log in the last %.1f s "
        "(at most %d are logged a window)",
        left_out,
        seconds,
        per_window,
        extra={"exitstack_left_out": left_out, "exitstack_window_seconds": seconds},
    )


def _ids(span_context: trace.SpanContext) -> str:
    if not span_context.is_valid:
        return ""
    return f" trace_id={span_context.trace_id:032x} span_id={span_context.span_id:016x}"


class _Timer(Protocol):
    def cancel(self) -> None: ...


def _start_timer(delay: float, function: Callable[[], None]) -> _Timer:
    timer = threading.Timer(delay, function)
    timer.name = "exitstack-otel-failure-log"
    timer.daemon = True  # never holds the process up; the summary at exit comes from atexit
    timer.start()
    return timer


class FailureLog:
    """Logs failed callbacks, at most ``FAILURES_PER_WINDOW`` every ``WINDOW_SECONDS``.

    Failures beyond that are counted, and the count is logged when the window ends (a timer,
    started only by the first failure left out of a window), when the next failure after it
    arrives, or at shutdown, whichever is first; with the time the window really lasted.
    Failures that their failure budget kept out of the traces (``failure_budget``) are never
    logged: whoever records them adds them to ``unlogged``, and the summary counts them too.
    """

    def __init__(
        self,
        per_window: int = FAILURES_PER_WINDOW,
        window: float = WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        schedule: Callable[[float, Callable[[], None]], _Timer] = _start_timer,
    ) -> None:
        self.per_window = per_window
        self.window = window
        self._clock = clock
        self._schedule = schedule
        self._lock = threading.Lock()
        self._window_start = clock()
        self._logged = 0
        self._left_out = 0
        self.unlogged = 0
        """Added to without the lock, by a storm's every request: two threads adding at once may
        lose one of the adds, a count in a log line (the metrics count every failure exactly)."""
        self.timer: _Timer | None = None
        """None while no summary is due: whoever adds to ``unlogged`` then calls ``summary_due``."""
        _live.add(self)

    def _allowed(self) -> bool:
        with self._lock:
            now = self._clock()
            summary = self._end_window(now) if now - self._window_start >= self.window else None
            if self._logged < self.per_window:
                self._logged += 1
                allowed = True
            else:
                self._left_out += 1
                if self.timer is None:  # the first one left out: say so when the window ends
                    self._start_timer(now)
                allowed = False
        _log_left_out(summary)
        return allowed

    def summary_due(self) -> None:
        """``unlogged`` grew while no timer ran: the summary comes when the window ends."""
        with self._lock:
            now = self._clock()
            summary = self._end_window(now) if now - self._window_start >= self.window else None
            if self.timer is None:
                self._start_timer(now)
        _log_left_out(summary)

    def _end_window(self, now: float) -> tuple[int, float, int] | None:
        """Starts a new window at ``now``; what the old one left out, if anything. Under the lock."""
        unlogged = self.unlogged
        self.unlogged -= unlogged  # what another thread adds meanwhile stays for the next window
        left_out = self._left_out + unlogged
        summary = (left_out, now - self._window_start, self.per_window) if left_out else None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._window_start, self._logged, self._left_out = now, 0, 0
        return summary

    def _start_timer(self, now: float) -> None:
        """Under the lock: ``_window_ended`` at the current window's end."""
        start = self._window_start
        remaining = max(start + self.window - now, 0.0)
        self.timer = self._schedule(remaining, lambda: self._window_ended(start))

    def _window_ended(self, start: float) -> None:
        with self._lock:
            if start != self._window_start:  # a timer of a window already over (cancelled too late)
                return
            now = self._clock()
            if now - start < self.window:  # woken early: wait for the rest
                self._start_timer(now)
                return
            summary = self._end_window(now)
        _log_left_out(summary)

    def flush(self) -> None:
        """Logs what the current window left out now (at shutdown), and starts a new window."""
        with self._lock:
            summary = self._end_window(self._clock())
        _log_left_out(summary)

    def _forked(self) -> None:
        # a forked child has no timer thread, and the lock may have been held by another thread
        self._lock = threading.Lock()
        self.timer = None

    def failed(
        self,
        *,
        stack: str,
        callback: str,
        route: str | None,
        error_type: str,
        exc: BaseException,
        context: otel_context.Context | None,
    ) -> None:
        if not self._allowed():
            return
        span_context = trace.get_current_span(context).get_span_context()
        token = otel_context.attach(context) if context is not None else None
        try:
            logger.error(
                "cleanup callback %s on stack %s failed with %s (route %s)%s",
                callback,
                stack,
                error_type,
                route or "-",
                _ids(span_context),
                exc_info=(type(exc), exc, exc.__traceback__),
                extra={
                    "exitstack_stack": stack,
                    "exitstack_callback": callback,
                    "exitstack_route": route,
                    "exitstack_error_type": error_type,
                },
            )
        finally:
            if token is not None:
                otel_context.detach(token)


class NamedCallback(Protocol):
    @property
    def name(self) -> str: ...


class WatchedStack(Protocol):
    """What the watcher reads of an unwinding stack (``InstrumentedAsyncExitStack``).

    A protocol rather than the stack's class: the stack imports this module, and this module
    needs no more of the stack than these four attributes.
    """

    @property
    def name(self) -> str: ...
    @property
    def route(self) -> str | None: ...
    @property
    def parent_context(self) -> otel_context.Context | None: ...
    @property
    def running_callback(self) -> tuple[NamedCallback, float, float | None] | None:
        """The callback running now, since when, and its hung-warning threshold."""


class HungWatch:
    """A daemon thread that warns once for each callback still running after its stack's threshold."""

    def __init__(self, interval: float = WATCH_INTERVAL_SECONDS) -> None:
        self.interval = interval
        # a plain set: the stack adds itself when its unwind starts and always takes itself out
        self.unwinding: set[WatchedStack] = set()
        self._warned: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self.thread: threading.Thread | None = None
        """None until the first watched unwind starts it (the stack checks, and calls start())"""

    def start(self) -> None:
        with self._lock:
            if self.thread is None:
                self.thread = threading.Thread(
                    target=self._run, name="exitstack-otel-hung-watch", daemon=True
                )
                self.thread.start()

    def _forked(self) -> None:
        # a forked child has no copy of the parent's thread: the next watched unwind starts one
        self._lock = threading.Lock()
        self.thread = None
        self.unwinding = set()

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            try:
                self.check(time.perf_counter())
            except Exception:  # the watcher must outlive anything odd it finds
                logger.exception("exitstack-otel: the hung-callback watcher failed; it goes on")

    def check(self, now: float) -> None:
        for stack in list(self.unwinding):
            running = stack.running_callback
            if running is None:
                continue
            info, since, threshold = running
            if threshold is None or now - since < threshold or self._warned.get(stack) == since:
                continue
            self._warned[stack] = since
            trace_id = trace.get_current_span(stack.parent_context).get_span_context()
            logger.warning(
                "cleanup callback %s on stack %s still running after %.1f s (route %s)%s",
                info.name,
                stack.name,
                now - since,
                stack.route or "-",
                _ids(trace_id),
                extra={
                    "exitstack_stack": stack.name,
                    "exitstack_callback": info.name,
                    "exitstack_route": stack.route,
                },
            )


# every FailureLog alive, for the summaries at shutdown and after a fork
_live: weakref.WeakSet[FailureLog] = weakref.WeakSet()


def _flush_all() -> None:
    for failure_log in list(_live):
        failure_log.flush()


def _forked() -> None:
    hung_watch._forked()
    for failure_log in list(_live):
        failure_log._forked()


hung_watch = HungWatch()
# registered after logging's own atexit shutdown, so run before it: the handlers are still there
atexit.register(_flush_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)
