from __future__ import annotations

import bisect
import math

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from exitstack_otel import semconv
from exitstack_otel.demo.report import (
    estimate_quantile,
    format_seconds,
    read_report,
    render_stacks,
    render_table,
)
from exitstack_otel.providers import TelemetrySource
from exitstack_otel.stack import InstrumentedAsyncExitStack
from tests.support.clock import SteppedClock
from tests.support.otel_helpers import Sdk

BOUNDS = semconv.DURATION_BUCKETS


def bucket_counts(samples: list[float]) -> list[int]:
    counts = [0] * (len(BOUNDS) + 1)
    for sample in samples:
        counts[bisect.bisect_left(BOUNDS, sample)] += 1  # buckets are (lower, upper], as in the SDK
    return counts


def test_quantile_interpolates_inside_one_bucket() -> None:
    # 10 values in (0.01, 0.025]: the median sits halfway between the bounds
    assert estimate_quantile(0.5, BOUNDS, bucket_counts([0.02] * 10), 0.0, 1.0) == pytest.approx(0.0175)


def test_quantile_is_bounded_by_min_and_max() -> None:
    counts = bucket_counts([30.0, 40.0])  # both in the open-ended last bucket
    assert estimate_quantile(0.99, BOUNDS, counts, 30.0, 40.0) == pytest.approx(39.9)
    assert estimate_quantile(0.0, BOUNDS, bucket_counts([0.00001]), 0.00001, 0.00001) == pytest.approx(
        0.00001
    )


def test_quantile_of_an_empty_histogram_is_none_and_bad_input_is_refused() -> None:
    assert estimate_quantile(0.5, BOUNDS, [0] * (len(BOUNDS) + 1), 0.0, 0.0) is None
    with pytest.raises(ValueError, match="between 0 and 1"):
        estimate_quantile(1.5, BOUNDS, bucket_counts([1.0]), 1.0, 1.0)
    with pytest.raises(ValueError, match="one more bucket"):
        estimate_quantile(0.5, BOUNDS, [1], 1.0, 1.0)


@given(
    st.lists(st.floats(min_value=1e-6, max_value=20.0), min_size=1, max_size=200),
    st.sampled_from([0.5, 0.9, 0.95, 0.99]),
)
def test_estimate_lies_in_the_bucket_of_the_true_quantile(samples: list[float], q: float) -> None:
    ordered = sorted(samples)
    true = ordered[max(math.ceil(q * len(ordered)) - 1, 0)]
    index = bisect.bisect_left(BOUNDS, true)
    lower = max(BOUNDS[index - 1] if index else ordered[0], ordered[0])
    upper = min(BOUNDS[index] if index < len(BOUNDS) else ordered[-1], ordered[-1])
    estimate = estimate_quantile(q, BOUNDS, bucket_counts(samples), ordered[0], ordered[-1])
    assert estimate is not None
    assert lower - 1e-12 <= estimate <= upper + 1e-12


class Boom(RuntimeError):
    pass


@pytest.mark.anyio
async def test_report_counts_pushed_executed_failed_and_never_ran_from_the_sdk(sdk: Sdk) -> None:
    reader = sdk.reader
    telemetry = TelemetrySource(sdk.tracer_provider, sdk.meter_provider).current()

    async def release() -> None:
        pass

    def explode() -> None:
        raise Boom("cleanup failed")

    for _ in range(3):
        async with InstrumentedAsyncExitStack("requests", telemetry=telemetry) as stack:
            stack.push_async_callback(release)
    with pytest.raises(Boom):
        async with InstrumentedAsyncExitStack("requests", telemetry=telemetry) as stack:
            stack.callback(explode)
    abandoned = InstrumentedAsyncExitStack("requests", telemetry=telemetry)
    abandoned.push_async_callback(release)  # never unwound

    report = read_report(reader)
    rows = {row.callback.rsplit(".", 1)[-1]: row for row in report.rows}
    assert set(rows) == {"release", "explode"}
    assert (rows["release"].pushed, rows["release"].executed, rows["release"].never_ran) == (4, 3, 1)
    assert (rows["explode"].executed, rows["explode"].failed) == (1, 1)
    assert rows["explode"].error_types == {f"{__name__}.Boom": 1}
    assert (report.unwinds, report.unwinds_active, report.never_ran, report.failed) == (4, 0, 1, 1)
    document = report.as_dict()
    assert document["executed"] == 4
    assert {row["callback"].rsplit(".", 1)[-1]: row["never_ran"] for row in document["callbacks"]} == {
        "release": 1,
        "explode": 0,
    }

    table = render_table(report)
    header, *lines = table.splitlines()
    assert header.split() == [
        "stack",
        "callback",
        "pushed",
        "executed",
        "failed",
        "never",
        "ran",
        "p50",
        "p95",
        "p99",
        "max",
    ]
    release_line = next(line for line in lines if "release" in line)
    assert release_line.split()[2:6] == ["4", "3", "0", "1"]
    assert f"failed 1x with {__name__}.Boom" in table


SLOW = 0.0625  # seconds, a binary fraction: the clock's readings differ by exactly this


@pytest.mark.anyio
async def test_a_slow_run_shows_in_max_and_not_in_p99(sdk: Sdk, stepped_clock: SteppedClock) -> None:
    reader = sdk.reader
    telemetry = TelemetrySource(sdk.tracer_provider, sdk.meter_provider).current()

    async def release(seconds: float) -> None:
        await anyio.lowlevel.checkpoint()
        stepped_clock.advance(seconds)  # lasts exactly this long, however busy the machine

    for index in range(200):
        async with InstrumentedAsyncExitStack("requests", telemetry=telemetry) as stack:
            stack.push_async_callback(release, SLOW if index == 100 else 0.0)
    report = read_report(reader)
    (row,) = report.rows
    durations = row.quantiles()
    assert durations["max"] is not None
    assert durations["max"] >= SLOW
    assert durations["p99"] is not None
    assert durations["p99"] < SLOW
    assert row.as_dict()["duration_s"]["max"] == durations["max"]
    release_line = next(line for line in render_table(report).splitlines() if "release" in line)
    assert release_line.split()[-1] == format_seconds(durations["max"])


@pytest.mark.anyio
async def test_unwinds_are_broken_down_per_stack(sdk: Sdk) -> None:
    reader = sdk.reader
    telemetry = TelemetrySource(sdk.tracer_provider, sdk.meter_provider).current()

    def release() -> None:
        pass

    for name, count in (("outer", 3), ("inner", 2)):
        for _ in range(count):
            async with InstrumentedAsyncExitStack(name, telemetry=telemetry) as stack:
                stack.callback(release)
    running = InstrumentedAsyncExitStack("inner", telemetry=telemetry)
    running.callback(release)
    hung = anyio.Event()

    async def hang() -> None:
        await hung.wait()

    running.push_async_callback(hang)
    async with anyio.create_task_group() as tg:
        tg.start_soon(running.aclose)
        await anyio.wait_all_tasks_blocked()
        report = read_report(reader)
        hung.set()

    assert [(stack.stack, stack.unwinds, stack.active) for stack in report.stacks] == [
        ("inner", 2, 1),
        ("outer", 3, 0),
    ]
    assert (report.unwinds, report.unwinds_active) == (5, 1)
    assert [row["stack"] for row in report.as_dict()["stacks"]] == ["inner", "outer"]
    header, *lines = render_stacks(report).splitlines()
    assert header.split() == ["stack", "unwinds", "active", "p50", "p95", "p99", "max"]  # the JSON field
    assert [line.split()[:3] for line in lines] == [["inner", "2", "1"], ["outer", "3", "0"]]
    assert read_report(reader).unwinds == 6  # the hung one has ended since


def test_report_of_an_unused_reader_is_empty() -> None:
    reader = InMemoryMetricReader()
    MeterProvider(metric_readers=[reader])
    report = read_report(reader)
    assert (report.rows, report.executed, report.unwinds) == ([], 0, 0)


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(None, "-"), (0.0000042, "4µs"), (0.0123, "12.3ms"), (2.5, "2.50s")],
)
def test_durations_are_shown_in_a_readable_unit(seconds: float | None, shown: str) -> None:
    assert format_seconds(seconds) == shown
