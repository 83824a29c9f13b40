"""The demo's cleanup log: the failures its traffic asks for are counted on stderr, not dumped.

The library logs every failed cleanup callback with its traceback (README: Logs), as it would in
production; in the demo those failures are requested and already in the report, so a screen of
tracebacks would only hide the progress line. Every record of the ``exitstack_otel`` logger goes,
in full, to a file; stderr shows the records that are not one of the requested failures (anything
unexpected), and the summary says how many there were and where the file is.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .. import cleanup_log
from .audit import AuditFlushError

RECORD_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def default_path() -> Path:
    return Path(tempfile.gettempdir()) / f"exitstack-otel-demo-{os.getpid()}.log"


@dataclass
class CleanupLogCounts:
    path: Path
    requested: int = 0
    """Records of the failures the traffic asked for (``AuditFlushError``): in the file only."""
    left_out: int = 0
    """Failures the library left out of the log (its failure budget, its rate limit; it says so in
    one record)."""
    shown: int = 0
    """Other records: on stderr as well."""

    def summary(self) -> str:
        if not (self.requested or self.left_out or self.shown):
            return "cleanup log: no records"
        text = f"cleanup log: {self.requested} records of the failures the traffic asked for"
        if self.left_out:
            text += f" (and {self.left_out} more left out by its limits)"
        if self.shown:
            text += f", {self.shown} other records shown above"
        return f"{text}; full records, tracebacks included, in {self.path}"


class _Sort(logging.Filter):
    """Counts the requested failures and the rate limit's summaries; passes the rest to stderr."""

    def __init__(self, counts: CleanupLogCounts) -> None:
        super().__init__()
        self.counts = counts

    def filter(self, record: logging.LogRecord) -> bool:
        left_out = getattr(record, "exitstack_left_out", None)
        if isinstance(left_out, int):
            self.counts.left_out += left_out
            return False
        if record.exc_info and isinstance(record.exc_info[1], AuditFlushError):
            self.counts.requested += 1
            return False
        self.counts.shown += 1
        return True


@contextlib.contextmanager
def demo_cleanup_log(path: Path | None = None) -> Iterator[CleanupLogCounts]:
    """While the block runs, ``exitstack_otel``'s records go to ``path`` (created at the first
    record) and, except the requested failures, to stderr; they do not reach the root logger."""
    counts = CleanupLogCounts(path or default_path())
    logger = logging.getLogger("exitstack_otel")
    to_file = logging.FileHandler(counts.path, delay=True, encoding="utf-8")
    to_file.setFormatter(logging.Formatter(RECORD_FORMAT))
    to_stderr = logging.StreamHandler(sys.stderr)
    to_stderr.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    to_stderr.addFilter(_Sort(counts))
    propagate = logger.propagate
    logger.addHandler(to_file)
    logger.addHandler(to_stderr)
    logger.propagate = False
    try:
        yield counts
    finally:
        cleanup_log._flush_all()  # what the rate limit left out, said now rather than at exit
        logger.removeHandler(to_stderr)
        logger.removeHandler(to_file)
        logger.propagate = propagate
        to_file.close()
