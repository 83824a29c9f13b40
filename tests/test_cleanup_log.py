"""The cleanup log: its rate limit, and the logger users configure (tests/integration/test_cleanup_log.py
has the records of a real server)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading
import warnings
from collections.abc import Callable

import pytest

from exitstack_otel import cleanup_log
from exitstack_otel.cleanup_log import FailureLog, HungWatch, hung_watch
from tests.support.polling import wait_until


def _records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("exitstack_otel") and r.levelno == level]


def test_the_documented_exitstack_otel_logger_receives_the_failures() -> None:
    # the README tells users to configure `exitstack_otel`; the record comes from its child
    # exitstack_otel.cleanup_log, and reaches a handler and a level set on the parent
    received: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            received.append(record)

    handler = Keep()
    parent = logging.getLogger("exitstack_otel")
    parent.addHandler(handler)
    try:
        log = FailureLog(per_window=3, window=60.0, clock=lambda: 0.0, schedule=Timers())
        log.failed(stack="s", callback="c", route=None, error_type="E", exc=RuntimeError(), context=None)
    finally:
        parent.removeHandler(handler)
    [record] = received
    assert record.name == "exitstack_otel.cleanup_log"
    assert record.levelno == logging.ERROR


class Timers:
    """Stands in for the FailureLog's timer: records what it was asked to run, runs it when told."""

    def __init__(self) -> None:
        self.scheduled: list[tuple[float, Callable[[], None]]] = []
        self.cancelled = 0

    def __call__(self, delay: float, function: Callable[[], None]) -> Timers:
        self.scheduled.append((delay, function))
        return self

    def cancel(self) -> None:
        self.cancelled += 1

    def fire(self) -> None:
        _, function = self.scheduled.pop(0)
        function()


def fail(log: FailureLog, times: int = 1) -> None:
    for _ in range(times):
        log.failed(stack="s", callback="c", route=None, error_type="E", exc=RuntimeError(), context=None)


def summaries(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in _records(caplog, logging.WARNING)]


def test_a_failure_storm_is_rate_limited_and_says_how_much_it_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    log = FailureLog(per_window=3, window=60.0, clock=lambda: now[0], schedule=Timers())
    with caplog.at_level(logging.WARNING):
        fail(log, 10)
        now[0] = 61.0
        fail(log)
    assert len(_records(caplog, logging.ERROR)) == 4  # three, then one in the next window
    [summary] = summaries(caplog)
    assert "left 7 more" in summary


def test_the_summary_comes_when_the_window_ends_though_no_failure_follows(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # a burst, then silence: the summary must not wait for the next failure, which may never come
    now = [100.0]
    timers = Timers()
    log = FailureLog(per_window=3, window=60.0, clock=lambda: now[0], schedule=timers)
    now[0] = 110.0
    with caplog.at_level(logging.WARNING):
        fail(log, 3)
        assert timers.scheduled == []  # nothing left out yet: no timer, nothing per failure
        fail(log, 7)
        assert [delay for delay, _ in timers.scheduled] == [50.0]  # one timer, for the window's end
        assert summaries(caplog) == []
        now[0] = 160.0
        timers.fire()
        assert summaries(caplog) == [
            "exitstack-otel left 7 more failed cleanup callbacks out of the log in the last 60.0 s "
            "(at most 3 are logged a window)"
        ]
        log.flush()  # shutdown: nothing more to say
        fail(log, 3)  # a new window: logged again
    assert len(summaries(caplog)) == 1
    assert len(_records(caplog, logging.ERROR)) == 6


def test_a_timer_woken_early_waits_for_the_rest_of_the_window(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    timers = Timers()
    log = FailureLog(per_window=1, window=60.0, clock=lambda: now[0], schedule=timers)
    with caplog.at_level(logging.WARNING):
        fail(log, 2)
        now[0] = 59.5
        timers.fire()
        assert summaries(caplog) == []
        assert [delay for delay, _ in timers.scheduled] == [0.5]
        now[0] = 60.0
        timers.fire()
    assert ["left 1 more" in message for message in summaries(caplog)] == [True]


def test_a_late_summary_states_the_interval_it_covers(caplog: pytest.LogCaptureFixture) -> None:
    # the timer never ran (a stopped process, say): the next failure, ten minutes on, says how long
    now = [0.0]
    log = FailureLog(per_window=1, window=60.0, clock=lambda: now[0], schedule=Timers())
    with caplog.at_level(logging.WARNING):
        fail(log, 5)
        now[0] = 600.0
        fail(log)
    [summary] = summaries(caplog)
    assert "left 4 more failed cleanup callbacks out of the log in the last 600.0 s" in summary


def test_a_timer_of_a_window_already_over_says_nothing(caplog: pytest.LogCaptureFixture) -> None:
    # the next failure closed the window before its timer ran (cancel() came too late for it)
    now = [0.0]
    timers = Timers()
    log = FailureLog(per_window=1, window=60.0, clock=lambda: now[0], schedule=timers)
    with caplog.at_level(logging.WARNING):
        fail(log, 2)
        now[0] = 70.0
        fail(log, 3)  # closes the first window (its summary), one logged, two left out: a new timer
        assert len(timers.scheduled) == 2
        timers.fire()  # the first window's timer, late
        assert len(summaries(caplog)) == 1
        assert len(timers.scheduled) == 1  # the new window's own timer, and no second one
        now[0] = 130.0
        timers.fire()
    assert [message.split(" failed")[0] for message in summaries(caplog)] == [
        "exitstack-otel left 1 more",
        "exitstack-otel left 2 more",
    ]
    assert "in the last 60.0 s" in summaries(caplog)[1]  # the new window, from 70 s to 130 s


def test_shutdown_says_what_the_unfinished_window_left_out(caplog: pytest.LogCaptureFixture) -> None:
    cleanup_log._flush_all()  # other tests' logs have had their say, outside this test's records
    caplog.clear()
    now = [0.0]
    timers = Timers()
    log = FailureLog(per_window=2, window=60.0, clock=lambda: now[0], schedule=timers)
    with caplog.at_level(logging.WARNING):
        fail(log, 6)
        now[0] = 12.0
        cleanup_log._flush_all()  # what atexit runs
    [summary] = summaries(caplog)
    assert "left 4 more failed cleanup callbacks out of the log in the last 12.0 s" in summary
    assert timers.cancelled == 1  # the window's timer will not speak again


def test_a_real_timer_logs_the_summary_after_a_short_window(caplog: pytest.LogCaptureFixture) -> None:
    log = FailureLog(per_window=1, window=0.2)
    with caplog.at_level(logging.WARNING):
        fail(log, 3)
        wait_until(lambda: summaries(caplog), "the window's summary", timeout=30.0)
    [summary] = summaries(caplog)
    assert "left 2 more" in summary

    def timer_gone() -> bool:
        return "exitstack-otel-failure-log" not in [thread.name for thread in threading.enumerate()]

    wait_until(timer_gone, "the timer thread to end once it has spoken", timeout=30.0)


def test_a_process_that_exits_mid_window_logs_its_summary() -> None:
    program = textwrap.dedent(
        """
        import logging
        from exitstack_otel.cleanup_log import FailureLog

        logging.basicConfig(format="%(levelname)s %(message)s")
        log = FailureLog(per_window=2, window=3600.0)
        for _ in range(5):
            log.failed(stack="s", callback="c", route=None, error_type="E", exc=RuntimeError(), context=None)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    [summary] = [line for line in result.stderr.splitlines() if line.startswith("WARNING")]
    assert "left 3 more failed cleanup callbacks out of the log in the last" in summary


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_starts_its_own_hung_watcher() -> None:
    # a pre-forking server (gunicorn --preload) forks after the parent's watcher started
    if hung_watch.thread is None:
        hung_watch.start()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with other threads alive
        child = os.fork()
    if child == 0:  # the child: must end here, whatever happens
        code = 1
        try:
            code = 2 if hung_watch.thread is not None else 3
            if hung_watch.thread is None and not hung_watch.unwinding:
                hung_watch.start()
                thread = hung_watch.thread
                code = 0 if thread is not None and thread.is_alive() else 4
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_the_watcher_starts_once() -> None:
    watch = HungWatch(interval=3600)
    watch.start()
    first = watch.thread
    watch.start()
    assert first is not None
    assert watch.thread is first


def test_failures_kept_out_by_their_budget_are_counted_in_the_summary(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # the failure budget adds to `unlogged` and asks for a summary only when no timer runs
    now = [0.0]
    timers = Timers()
    log = FailureLog(per_window=2, window=60.0, clock=lambda: now[0], schedule=timers)
    with caplog.at_level(logging.WARNING):
        log.unlogged += 5
        log.summary_due()
        assert log.timer is not None
        fail(log, 3)  # two logged, one left out by the log's own limit: no second timer
        log.unlogged += 4
        assert len(timers.scheduled) == 1
        now[0] = 60.0
        timers.fire()
    [summary] = summaries(caplog)
    assert "left 10 more failed cleanup callbacks out of the log in the last 60.0 s" in summary
    assert log.unlogged == 0
    assert log.timer is None
