"""What the CLI's three modes do: an embedded demo with a report, the service alone, traffic alone."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import anyio
from starlette.types import ASGIApp

from .logs import demo_cleanup_log
from .pool import ConnectionPool
from .progress import progress_line, show_progress
from .report import CleanupReport, columns, read_report, render_stacks, render_table
from .sdk import DemoSdk, build_sdk
from .server import RunningServer, bind, running_server
from .settings import DemoSettings
from .traffic import TrafficConfig, TrafficGenerator, TrafficStats


@dataclass(frozen=True)
class ServiceOptions:
    app: str = "starlette"
    host: str = "127.0.0.1"
    port: int = 0
    otlp_endpoint: str | None = None
    prometheus_port: int | None = None
    prometheus_host: str = "127.0.0.1"
    log_level: str = "warning"
    settings: DemoSettings = field(default_factory=DemoSettings)
    log_file: Path | None = None
    """Where the embedded demo writes the cleanup log's full records (None: a file in the temp dir)."""


def build_app(options: ServiceOptions, sdk: DemoSdk) -> ASGIApp:
    if options.app == "fastapi":
        try:
            from .fastapi_app import create_fastapi_app
        except ImportError as exc:
            raise RuntimeError(
                "--app fastapi needs FastAPI: pip install '.[fastapi]' in the exitstack-otel checkout "
                f"({exc})"
            ) from exc
        return create_fastapi_app(
            options.settings, tracer_provider=sdk.tracer_provider, meter_provider=sdk.meter_provider
        )
    from .app import create_app

    return create_app(
        options.settings, tracer_provider=sdk.tracer_provider, meter_provider=sdk.meter_provider
    )


class _Stopper:
    """SIGINT and SIGTERM. The first stops the run (the traffic, or ``--serve``'s wait); requests in
    flight still finish their cleanup and the report is printed. A second one stops the waiting."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self.run_scope = anyio.CancelScope()
        self.server: RunningServer | None = None
        self.forced = False

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[_Stopper]:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch)
            try:
                yield self
            finally:
                tg.cancel_scope.cancel()

    async def _watch(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for received in signals:
                if self.signal is None:
                    self.signal = received
                    self.run_scope.cancel()
                elif self.server is not None:
                    _log("stopping without waiting for the requests still in flight")
                    self.forced = True
                    self.server.stop_waiting()

    def exit_code(self, code: int) -> int:
        if self.forced:
            # Cleanup still running is shielded from cancellation, and the event loop's teardown
            # would wait for it: after a second Ctrl-C, leave without that wait (the report is out).
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        return code


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def _drive(config: TrafficConfig, stats: TrafficStats, sdk: DemoSdk | None) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(show_progress, stats, sdk.reader if sdk is not None else None)
        await TrafficGenerator(config, stats).run()
        tg.cancel_scope.cancel()


async def run_demo(
    options: ServiceOptions,
    traffic: TrafficConfig,
    json_report: Path | None = None,
    out: TextIO = sys.stdout,
) -> int:
    stopper = _Stopper()
    stats = TrafficStats()
    with bind(options.host, options.port) as sock:  # a port in use is a plain error, before anything starts
        sdk = _sdk(options)
        try:
            app = build_app(options, sdk)
            # the failures the traffic asks for are in the report: counted here, not dumped on stderr
            with demo_cleanup_log(options.log_file) as cleanup_records:
                async with (
                    stopper.watching(),
                    running_server(app, sock, log_level=options.log_level) as server,
                ):
                    stopper.server = server
                    _log(
                        f"demo service ({options.app}) on {server.url}; traffic for {traffic.duration:g} s "
                        f"at {traffic.rate:g} req/s, concurrency {traffic.concurrency} (Ctrl-C stops early)"
                    )
                    with stopper.run_scope:
                        await _drive(replace(traffic, target=server.url), stats, sdk)
                    _log(progress_line(stats, sdk.reader))
                    _log("traffic stopped; waiting for in-flight requests and their cleanup")
            _log(cleanup_records.summary())
            # the server has shut down: every unwind has ended, the numbers are final
            report = _report(sdk, app, stats, options.app, stopper.signal, out, json_report)
        finally:
            sdk.shutdown()
    if report.executed == 0:
        _log("no cleanup was observed: the middleware recorded no executed callback")
        return stopper.exit_code(1)
    return stopper.exit_code(0)


def _report(
    sdk: DemoSdk,
    app: ASGIApp,
    stats: TrafficStats | None,
    app_name: str,
    stopped_by: int | None,
    out: TextIO,
    json_report: Path | None,
) -> CleanupReport:
    """Print the cleanup report (and write it as JSON); the server must have stopped."""
    report = read_report(sdk.reader)
    pool = pool_counts(app, report, app_name)
    print_report(report, stats, app_name, stopped_by, out, pool)
    if json_report is not None:
        write_json(json_report, report_document(report, stats, app_name, stopped_by, pool))
    return report


async def run_serve(
    options: ServiceOptions, json_report: Path | None = None, out: TextIO = sys.stdout
) -> int:
    stopper = _Stopper()
    with bind(options.host, options.port) as sock:
        sdk = _sdk(options)
        try:
            app = build_app(options, sdk)
            async with stopper.watching(), running_server(app, sock, log_level=options.log_level) as server:
                stopper.server = server
                _log(f"demo service ({options.app}) on {server.url} (Ctrl-C or SIGTERM stops it)")
                with stopper.run_scope:
                    await anyio.sleep_forever()
                _log("stopping: waiting for in-flight requests and their cleanup")
            _report(sdk, app, None, options.app, stopper.signal, out, json_report)
        finally:
            sdk.shutdown()
    return stopper.exit_code(0)


async def run_traffic(
    traffic: TrafficConfig, json_report: Path | None = None, out: TextIO = sys.stdout
) -> int:
    stopper = _Stopper()
    stats = TrafficStats()
    length = "until stopped" if traffic.duration is None else f"for {traffic.duration:g} s"
    _log(f"traffic to {traffic.target} {length} at {traffic.rate:g} req/s, concurrency {traffic.concurrency}")
    async with stopper.watching():
        with stopper.run_scope:
            await _drive(traffic, stats, None)
    out.write(render_traffic(stats) + "\n")
    out.flush()
    if json_report is not None:
        write_json(json_report, {"traffic": stats.as_dict(), "interrupted_by": _signal_name(stopper.signal)})
    return 0 if stats.total().completed else 1


# The callbacks that give a connection back to the pool, per demo app: a stream's cursor holds its
# connection until the last row is sent, and its close returns it, so ConnectionPool.release alone
# (/pool and /ws) is short of the pool's count of releases by the streams.
LEASE_RETURNS = {
    "starlette": ("ConnectionPool.release", "ResultCursor.close"),
    "fastapi": ("create_fastapi_app.<locals>.leased_connection", "create_fastapi_app.<locals>.open_cursor"),
}


def pool_counts(
    app: ASGIApp, report: CleanupReport | None = None, app_name: str = ""
) -> dict[str, Any] | None:
    """The demo pool's own bookkeeping, a check on the telemetry: every lease returned, and by which
    callbacks (executed, by the report)?"""
    pool = getattr(getattr(app, "state", None), "pool", None)
    if not isinstance(pool, ConnectionPool):
        return None
    counts: dict[str, Any] = {
        "size": pool.size,
        "acquired": pool.acquired,
        "released": pool.released,
        "in_use": pool.in_use,
    }
    if report is not None and app_name in LEASE_RETURNS:
        counts["released_by"] = {
            name: sum(row.executed for row in report.rows if row.callback == name)
            for name in LEASE_RETURNS[app_name]
        }
    return counts


def _sdk(options: ServiceOptions) -> DemoSdk:
    sdk = build_sdk(
        otlp_endpoint=options.otlp_endpoint,
        prometheus_port=options.prometheus_port,
        prometheus_host=options.prometheus_host,
    )
    for note in sdk.notes:
        _log(note)
    return sdk


def render_traffic(stats: TrafficStats) -> str:
    # the column names are the JSON report's field names (traffic.kinds.*), spaces for underscores
    header = ("kind", "sent", "completed", "errors", "interrupted", "meant to fail", "meant slow")
    lines: list[tuple[str, ...]] = [header]
    for kind, counts in [*stats.kinds.items(), ("total", stats.total())]:
        numbers = (counts.sent, counts.completed, counts.errors, counts.interrupted)
        lines.append((kind, *map(str, numbers), str(counts.meant_to_fail), str(counts.meant_slow)))
    text = columns(lines, left_aligned=1)
    if stats.last_error:
        text.append(f"last error: {stats.last_error}")
    return "\n".join(text)


def print_report(
    report: CleanupReport,
    stats: TrafficStats | None,
    app: str,
    interrupted: int | None,
    out: TextIO,
    pool: dict[str, Any] | None = None,
) -> None:
    title = f"exitstack-otel demo ({app})"
    if interrupted is not None:
        title += f", stopped early by {_signal_name(interrupted)}"
    parts = [title, ""]
    if stats is not None:
        total = stats.total()
        elapsed = max(stats.elapsed(), 1e-9)
        parts += [
            f"Traffic: {total.sent} requests sent in {elapsed:.1f} s ({total.sent / elapsed:.1f}/s), "
            f"{total.completed} completed, {total.errors} errors, "
            f"{total.interrupted} interrupted by the stop",
            render_traffic(stats),
            "",
        ]
    parts += [
        f"Cleanup: {report.unwinds} unwinds, {report.executed} callbacks executed, {report.failed} failed, "
        f"{report.never_ran} never ran (pushed, not executed)",
        render_stacks(report),
        "",
        render_table(report),
    ]
    if pool is not None:
        parts.append(
            f"\nConnection pool: {pool['acquired']} acquired, {pool['released']} released, "
            f"{pool['in_use']} in use (size {pool['size']})"
        )
        released_by = pool.get("released_by")
        if released_by:
            names = list(released_by)
            parts.append(
                f"  released by {names[0]} {released_by[names[0]]} (/pool, /ws) and by {names[1]} "
                f"{released_by[names[1]]} (/stream: a cursor returns its connection when it is closed)"
            )
    if stats is not None:
        parts.append(f"Cleanups meant to fail: {stats.total().meant_to_fail}; failed: {report.failed}")
    out.write("\n".join(parts) + "\n")
    out.flush()


def report_document(
    report: CleanupReport,
    stats: TrafficStats | None,
    app: str,
    interrupted: int | None,
    pool: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "app": app,
        "written_at": time.time(),
        "interrupted_by": _signal_name(interrupted),
        "traffic": stats.as_dict() if stats is not None else None,
        "cleanup": report.as_dict(),
        "pool": pool,
    }


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2) + "\n")


def _signal_name(number: int | None) -> str | None:
    return None if number is None else signal.Signals(number).name
