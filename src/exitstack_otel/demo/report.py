"""The cleanup report: per stack and callback name, read back from the SDK's own in-process metrics.

Executed and failed callbacks come from the count of ``exitstack.callback.duration``, pushes from
the observable ``exitstack.callback.pushed``; their difference is what was pushed but never ran.
Unwinds per stack come from ``exitstack.unwind.duration`` and ``exitstack.unwind.active``.
Percentiles are estimated from the histogram buckets, as Prometheus' ``histogram_quantile`` does,
with the recorded min and max bounding the first and the open-ended last bucket; the max is the
SDK's own, exact, so one slow callback among thousands still shows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    Metric,
    NumberDataPoint,
)

from .. import semconv

QUANTILES = (0.5, 0.95, 0.99)
_FAILED = frozenset({semconv.OUTCOME_ERROR, semconv.OUTCOME_CANCELLED, semconv.OUTCOME_TIMEOUT})


def estimate_quantile(
    q: float, bounds: Sequence[float], counts: Sequence[int], low: float, high: float
) -> float | None:
    """The ``q`` quantile of a histogram with ``len(bounds) + 1`` buckets; None when it is empty."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be between 0 and 1, not {q}")
    if len(counts) != len(bounds) + 1:
        raise ValueError("a histogram has one more bucket than it has bounds")
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    cumulative = 0
    for index, count in enumerate(counts):
        if count and cumulative + count >= rank:
            lower = max(bounds[index - 1] if index > 0 else low, low)
            upper = min(bounds[index] if index < len(bounds) else high, high)
            return lower + (upper - lower) * max(rank - cumulative, 0) / count
        cumulative += count
    return high


@dataclass
class _Histogram:
    bounds: tuple[float, ...]
    counts: list[int]
    low: float = float("inf")
    high: float = float("-inf")

    def add(self, point: HistogramDataPoint) -> None:
        if tuple(point.explicit_bounds) != self.bounds:
            raise ValueError("data points of one histogram disagree on their bucket bounds")
        self.counts = [a + b for a, b in zip(self.counts, point.bucket_counts, strict=True)]
        if point.count:
            self.low = min(self.low, point.min)
            self.high = max(self.high, point.max)

    def quantile(self, q: float) -> float | None:
        return estimate_quantile(q, self.bounds, self.counts, self.low, self.high)

    @classmethod
    def of(cls, point: HistogramDataPoint) -> _Histogram:
        bounds = tuple(point.explicit_bounds)
        return cls(bounds, [0] * (len(bounds) + 1))


def _durations(histogram: _Histogram | None) -> dict[str, float | None]:
    """p50, p95, p99 and max of a duration histogram (None for each when nothing was recorded)."""
    found: dict[str, float | None] = {
        f"p{round(q * 100)}": None if histogram is None else histogram.quantile(q) for q in QUANTILES
    }
    found["max"] = None if histogram is None or not sum(histogram.counts) else histogram.high
    return found


@dataclass
class CallbackRow:
    stack: str
    callback: str
    kinds: set[str] = field(default_factory=set)
    pushed: int = 0
    executed: int = 0
    failed: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    error_types: dict[str, int] = field(default_factory=dict)
    histogram: _Histogram | None = None

    @property
    def never_ran(self) -> int:
        return self.pushed - self.executed

    def quantiles(self) -> dict[str, float | None]:
        """p50, p95, p99 and max."""
        return _durations(self.histogram)

    def as_dict(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "callback": self.callback,
            "kinds": sorted(self.kinds),
            "pushed": self.pushed,
            "executed": self.executed,
            "failed": self.failed,
            "never_ran": self.never_ran,
            "outcomes": dict(sorted(self.outcomes.items())),
            "error_types": dict(sorted(self.error_types.items())),
            "duration_s": self.quantiles(),
        }


@dataclass
class StackRow:
    """The unwinds of one stack: how many ended, how many are still running, how long they took."""

    stack: str
    unwinds: int = 0
    active: int = 0
    histogram: _Histogram | None = None

    def quantiles(self) -> dict[str, float | None]:
        """p50, p95, p99 and max."""
        return _durations(self.histogram)

    def as_dict(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "unwinds": self.unwinds,
            "active": self.active,
            "duration_s": self.quantiles(),
        }


@dataclass
class CleanupReport:
    rows: list[CallbackRow]
    stacks: list[StackRow] = field(default_factory=list)

    @property
    def unwinds(self) -> int:
        return sum(stack.unwinds for stack in self.stacks)

    @property
    def unwinds_active(self) -> int:
        return sum(stack.active for stack in self.stacks)

    @property
    def executed(self) -> int:
        return sum(row.executed for row in self.rows)

    @property
    def failed(self) -> int:
        return sum(row.failed for row in self.rows)

    @property
    def never_ran(self) -> int:
        return sum(row.never_ran for row in self.rows)

    def as_dict(self) -> dict[str, Any]:
        return {
            "callbacks": [row.as_dict() for row in self.rows],
            "stacks": [stack.as_dict() for stack in self.stacks],
            "unwinds": self.unwinds,
            "unwinds_active": self.unwinds_active,
            "executed": self.executed,
            "failed": self.failed,
            "never_ran": self.never_ran,
        }


def read_report(reader: InMemoryMetricReader) -> CleanupReport:
    rows: dict[tuple[str, str], CallbackRow] = {}
    stacks: dict[str, StackRow] = {}

    def stack_for(attributes: Any) -> StackRow:
        name = str(attributes.get(semconv.STACK_NAME, "?"))
        found = stacks.get(name)
        if found is None:
            found = stacks[name] = StackRow(name)
        return found

    def row_for(attributes: Any) -> CallbackRow:
        key = (str(attributes.get(semconv.STACK_NAME, "?")), str(attributes.get(semconv.CALLBACK_NAME, "?")))
        found = rows.get(key)
        if found is None:
            found = rows[key] = CallbackRow(*key)
        found.kinds.add(str(attributes.get(semconv.CALLBACK_KIND, "?")))
        return found

    for metric in _our_metrics(reader):
        for point in metric.data.data_points:
            attributes = point.attributes or {}
            if metric.name == semconv.CALLBACK_DURATION and isinstance(point, HistogramDataPoint):
                row = row_for(attributes)
                outcome = str(attributes.get(semconv.CALLBACK_OUTCOME, "?"))
                row.executed += point.count
                row.outcomes[outcome] = row.outcomes.get(outcome, 0) + point.count
                if outcome in _FAILED:
                    row.failed += point.count
                    error = str(attributes.get(semconv.ERROR_TYPE, outcome))
                    row.error_types[error] = row.error_types.get(error, 0) + point.count
                if row.histogram is None:
                    row.histogram = _Histogram.of(point)
                row.histogram.add(point)
            elif metric.name == semconv.CALLBACK_PUSHED and isinstance(point, NumberDataPoint):
                row_for(attributes).pushed += int(point.value)
            elif metric.name == semconv.UNWIND_DURATION and isinstance(point, HistogramDataPoint):
                stack = stack_for(attributes)
                stack.unwinds += point.count
                if stack.histogram is None:
                    stack.histogram = _Histogram.of(point)
                stack.histogram.add(point)
            elif metric.name == semconv.UNWIND_ACTIVE and isinstance(point, NumberDataPoint):
                stack_for(attributes).active += int(point.value)
    ordered = sorted(rows.values(), key=lambda row: (row.stack, -row.pushed, row.callback))
    return CleanupReport(ordered, sorted(stacks.values(), key=lambda stack: stack.stack))


def _our_metrics(reader: InMemoryMetricReader) -> Iterator[Metric]:
    data = reader.get_metrics_data()
    if data is None:
        return
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            if scope_metrics.scope.name == semconv.SCOPE_NAME:
                yield from scope_metrics.metrics


def format_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 0.001:
        return f"{value * 1e6:.0f}µs"
    if value < 1.0:
        return f"{value * 1e3:.1f}ms"
    return f"{value:.2f}s"


def render_stacks(report: CleanupReport) -> str:
    """One line per stack: its unwinds, those still running (active), and how long an unwind took."""
    lines: list[tuple[str, ...]] = [("stack", "unwinds", "active", "p50", "p95", "p99", "max")]
    for stack in report.stacks:
        durations = (format_seconds(value) for value in stack.quantiles().values())
        lines.append((stack.stack, str(stack.unwinds), str(stack.active), *durations))
    return "\n".join(columns(lines, left_aligned=1))


def render_table(report: CleanupReport) -> str:
    header = ("stack", "callback", "pushed", "executed", "failed", "never ran", "p50", "p95", "p99", "max")
    lines: list[tuple[str, ...]] = [header]
    for row in report.rows:
        quantiles = row.quantiles()
        lines.append(
            (
                row.stack,
                row.callback,
                str(row.pushed),
                str(row.executed),
                str(row.failed),
                str(row.never_ran),
                *(format_seconds(value) for value in quantiles.values()),
            )
        )
    text = columns(lines, left_aligned=2)
    for row in report.rows:
        for error, count in sorted(row.error_types.items()):
            text.append(f"  {row.callback} failed {count}x with {error}")
    return "\n".join(text)


def columns(lines: Sequence[Sequence[str]], left_aligned: int) -> list[str]:
    """Aligned text columns: names on the left, numbers on the right."""
    widths = [max(len(line[column]) for line in lines) for column in range(len(lines[0]))]
    return [
        "  ".join(
            cell.ljust(width) if column < left_aligned else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    ]
