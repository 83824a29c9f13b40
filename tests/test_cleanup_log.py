"""The cleanup log: its rate limit, and the logger users configure (tests/integration/test_cleanup_log.py
has the records of a real server)."""

from __future__ import annotations

import logging
import os
import warnings

import pytest

from exitstack_otel.cleanup_log import FailureLog, HungWatch, hung_watch


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
        log = FailureLog(per_window=3, window=60.0, clock=lambda: 0.0)
        log.failed(stack="s", callback="c", route=None, error_type="E", exc=RuntimeError(), context=None)
    finally:
        parent.removeHandler(handler)
    [record] = received
    assert record.name == "exitstack_otel.cleanup_log"
    assert record.levelno == logging.ERROR


def test_a_failure_storm_is_rate_limited_and_says_how_much_it_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    log = FailureLog(per_window=3, window=60.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING):
        for _ in range(10):
            log.failed(stack="s", callback="c", route=None, error_type="E", exc=RuntimeError(), context=None)
        now[0] = 61.0
        log.failed(stack="s", callback="c", route=None, error_type="E", exc=RuntimeError(), context=None)
    assert len(_records(caplog, logging.ERROR)) == 4  # three, then one in the next window
    [summary] = _records(caplog, logging.WARNING)
    assert "left 7 more" in summary.getMessage()


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
