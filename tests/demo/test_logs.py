"""The demo's cleanup log: the failures its traffic asks for are counted, not dumped on stderr; the
file has every record in full, and anything unexpected still shows."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from exitstack_otel import cleanup_log
from exitstack_otel.cleanup_log import FailureLog
from exitstack_otel.demo.audit import AuditFlushError
from exitstack_otel.demo.logs import demo_cleanup_log


def fail(log: FailureLog, exc: BaseException) -> None:
    try:
        raise exc
    except BaseException as raised:
        log.failed(
            stack="s", callback="AuditLog.flush", route="/pool", error_type="E", exc=raised, context=None
        )


def test_requested_failures_go_to_the_file_and_are_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "demo.log"
    cleanup_log._flush_all()  # other tests' logs have had their say: the block's end flushes them all
    log = FailureLog(per_window=3, window=3600.0)
    with demo_cleanup_log(path) as counts:
        for _ in range(5):
            fail(log, AuditFlushError("audit store refused the record for /pool"))
        fail(log, KeyError("not asked for"))  # past the limit too: counted as left out
    err = capsys.readouterr().err
    assert err == ""  # nothing on stderr: the summary is the caller's to print
    assert (counts.requested, counts.left_out, counts.shown) == (3, 3, 0)
    records = path.read_text()
    assert records.count("Traceback (most recent call last)") == 3
    assert "left 3 more failed cleanup callbacks out of the log" in records  # said at the block's end
    assert counts.summary() == (
        "cleanup log: 3 records of the failures the traffic asked for (and 3 more left out by its "
        f"limits); full records, tracebacks included, in {path}"
    )


def test_anything_unexpected_still_shows_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "demo.log"
    log = FailureLog(per_window=20, window=3600.0)
    with demo_cleanup_log(path) as counts:
        fail(log, AuditFlushError("asked for"))
        fail(log, KeyError("a bug in a cleanup"))
        logging.getLogger("exitstack_otel.cleanup_log").warning("cleanup callback x still running")
    err = capsys.readouterr().err
    assert "KeyError: 'a bug in a cleanup'" in err
    assert "still running" in err
    assert "AuditFlushError" not in err
    assert (counts.requested, counts.shown) == (1, 2)
    assert counts.summary().endswith(
        f"2 other records shown above; full records, tracebacks included, in {path}"
    )


def test_the_logger_is_as_it_was_afterwards(tmp_path: Path) -> None:
    logger = logging.getLogger("exitstack_otel")
    handlers, propagate = list(logger.handlers), logger.propagate
    with demo_cleanup_log(tmp_path / "demo.log") as counts:
        assert logger.propagate is False
    assert (logger.handlers, logger.propagate) == (handlers, propagate)
    assert not (tmp_path / "demo.log").exists()  # no record, no file
    assert counts.summary() == "cleanup log: no records"
