from __future__ import annotations

import io
import math

import anyio
import pytest

from exitstack_otel.demo.app import create_app
from exitstack_otel.demo.progress import show_progress
from exitstack_otel.demo.report import CleanupReport
from exitstack_otel.demo.server import bind
from exitstack_otel.demo.settings import DemoSettings
from exitstack_otel.demo.traffic import TrafficConfig, TrafficGenerator, parse_mix
from tests.support.demo_helpers import serve_in_thread


def executed(report: CleanupReport | None, callback: str) -> int:
    assert report is not None
    return sum(row.executed for row in report.rows if row.callback == callback)


@pytest.mark.anyio
async def test_what_the_generator_counts_is_what_the_server_cleaned_up() -> None:
    with serve_in_thread(create_app, settings=DemoSettings(slow_seconds=0.0)) as demo:
        config = TrafficConfig(
            demo.url, rate=80, concurrency=6, duration=1.5, failure_share=0.3, slow_share=0.2, seed=11
        )
        stats = await TrafficGenerator(config).run()
    kinds = stats.kinds
    total = stats.total()
    assert total.errors == 0, stats.last_error
    assert total.completed == total.sent > 0
    assert all(counts.sent > 0 for counts in kinds.values()), kinds  # every kind of the mix was sent
    # ticks sit on a fixed timeline, so the count can fall short under load but never exceed it
    assert total.sent <= math.ceil(config.rate * config.duration)  # type: ignore[operator]

    report = demo.report
    assert report is not None
    assert report.never_ran == 0
    assert report.unwinds_active == 0
    assert report.unwinds == total.completed
    assert executed(report, "AuditLog.flush") == total.completed
    assert sum(row.failed for row in report.rows) == total.meant_to_fail > 0
    assert executed(report, "FormData.close") == kinds["upload"].completed
    assert executed(report, "ResultCursor.close") == kinds["stream"].completed
    assert executed(report, "SessionStats.record") == kinds["websocket"].completed
    assert (
        executed(report, "ConnectionPool.release") == kinds["pool"].completed + kinds["websocket"].completed
    )


@pytest.mark.anyio
async def test_a_mix_without_a_kind_sends_none_of_it() -> None:
    with serve_in_thread(create_app) as demo:
        config = TrafficConfig(demo.url, rate=50, duration=0.5, failure_share=0.0, mix={"pool": 1.0}, seed=1)
        stats = await TrafficGenerator(config).run()
    assert stats.kinds["pool"].completed == stats.total().sent > 0
    assert stats.total().meant_to_fail == 0
    assert demo.report is not None
    assert demo.report.failed == 0


@pytest.mark.anyio
async def test_a_server_that_is_not_there_is_counted_as_errors_not_raised() -> None:
    with bind("127.0.0.1", 0) as sock:  # bound, never listening: connections are refused
        port = sock.getsockname()[1]
        config = TrafficConfig(f"http://127.0.0.1:{port}", rate=20, concurrency=2, duration=0.3, seed=3)
        stats = await TrafficGenerator(config).run()
    total = stats.total()
    assert total.sent > 0
    assert (total.errors, total.completed) == (total.sent, 0)
    assert stats.last_error is not None


@pytest.mark.anyio
async def test_progress_in_a_log_says_why_requests_fail() -> None:
    with bind("127.0.0.1", 0) as sock:
        config = TrafficConfig(f"http://127.0.0.1:{sock.getsockname()[1]}", rate=50, duration=0.5, seed=4)
        generator = TrafficGenerator(config)
        log = io.StringIO()  # not a terminal: whole lines
        async with anyio.create_task_group() as tg:
            tg.start_soon(show_progress, generator.stats, None, log, 0.1)
            await generator.run()
            tg.cancel_scope.cancel()
    lines = log.getvalue().splitlines()
    assert lines
    assert all(line.split()[1] == "sent" for line in lines)
    assert any("last error: " in line and "ConnectError" in line for line in lines), lines


def test_mix_parsing() -> None:
    assert parse_mix("upload=3, pool=0.5") == {"upload": 3.0, "pool": 0.5}
    for text, message in [
        ("upload", "kind=weight"),
        ("upload=x", "not a number"),
        ("socks=1", "unknown request kind"),
        ("upload=0", "not all 0"),
        ("upload=-1", ">= 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_mix(text)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"target": "127.0.0.1:8000"}, "http"),
        ({"rate": 0}, "rate"),
        ({"concurrency": 0}, "concurrency"),
        ({"duration": -1}, "duration"),
        ({"failure_share": 1.5}, "failure_share"),
        ({"slow_share": -0.1}, "slow_share"),
    ],
)
def test_bad_traffic_settings_are_refused(changes: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"target": "http://127.0.0.1:1", **changes}
    with pytest.raises(ValueError, match=message):
        TrafficConfig(**arguments)  # type: ignore[arg-type]
