"""The live progress line: redrawn in place on a terminal, an occasional plain line otherwise."""

from __future__ import annotations

import sys
from typing import TextIO

import anyio
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from .report import read_report
from .traffic import TrafficStats

TTY_INTERVAL_SECONDS = 0.5
LOG_INTERVAL_SECONDS = 5.0


def progress_line(stats: TrafficStats, reader: InMemoryMetricReader | None) -> str:
    total = stats.total()
    elapsed = stats.elapsed()
    rate = total.sent / elapsed if elapsed > 0 else 0.0
    line = (
        f"{elapsed:6.1f}s  sent {total.sent}  completed {total.completed}  errors {total.errors}"
        f"  {rate:.1f} req/s"
    )
    if reader is not None:
        report = read_report(reader)
        line += (
            f"  executed {report.executed}  failed {report.failed}  active unwinds {report.unwinds_active}"
        )
    return line


async def show_progress(
    stats: TrafficStats,
    reader: InMemoryMetricReader | None,
    stream: TextIO = sys.stderr,
    interval: float | None = None,
) -> None:
    tty = stream.isatty()
    if interval is None:
        interval = TTY_INTERVAL_SECONDS if tty else LOG_INTERVAL_SECONDS
    errors_shown = 0
    try:
        while True:
            await anyio.sleep(interval)
            line = progress_line(stats, reader)
            errors = stats.total().errors
            if not tty and errors > errors_shown:
                # in a log (the compose stack's traffic service) say why, not only how many
                line += f"  last error: {stats.last_error}"
                errors_shown = errors
            stream.write(f"\r\x1b[2K{line}" if tty else f"{line}\n")
            stream.flush()
    finally:
        if tty:
            stream.write("\n")
            stream.flush()
