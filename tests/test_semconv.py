"""docs/telemetry.md and semconv.py name the same things, and the SDK output matches the doc."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from exitstack_otel import semconv
from exitstack_otel.stack import InstrumentedAsyncExitStack
from tests.support.otel_helpers import Sdk, attrs

DOC = (Path(__file__).parent.parent / "docs" / "telemetry.md").read_text()
CODE_SPANS = set(re.findall(r"`([^`\n]+)`", DOC))


def _semconv_strings() -> dict[str, str]:
    return {
        name: value
        for name, value in vars(semconv).items()
        if name.isupper() and isinstance(value, str) and name != "SCOPE_NAME"
    }


def _section(title: str) -> str:
    match = re.search(rf"^#+ {re.escape(title)}\n(.*?)(?=^#+ |\Z)", DOC, re.MULTILINE | re.DOTALL)
    assert match, f"docs/telemetry.md has no section {title!r}"
    return match.group(1)


def _table(section: str) -> list[list[str]]:
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in section.splitlines()
        if line.startswith("|")
    ]
    return [row for row in rows[2:]]  # header and separator


def _backticked(text: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", text)


def test_every_semconv_name_is_documented() -> None:
    missing = {
        name: value
        for name, value in _semconv_strings().items()
        if value not in CODE_SPANS and f"{value} {{name}}" not in CODE_SPANS
    }
    assert missing == {}
    assert f"Instrumentation scope: `{semconv.SCOPE_NAME}`" in DOC


def test_every_documented_name_is_in_semconv() -> None:
    known = set(_semconv_strings().values()) | {f"{semconv.SPAN_CALLBACK} {{name}}"}
    # kinds and outcomes are plain words: test_kinds_and_outcomes_lists checks them
    # dotted lower-case names are attribute, metric and span names; _UPPER is the overflow name
    documented = {token for token in CODE_SPANS if re.fullmatch(r"[a-z]+(\.[a-z_]+)+|_[A-Z]+", token)}
    assert {semconv.SPAN_UNWIND, semconv.ERROR_TYPE, semconv.OTHER_NAME} <= documented
    # OpenTelemetry's own resource attributes (service.name, ...) are mentioned, not ours to define
    assert {token for token in documented - known if not token.startswith("service.")} == set()


def test_kinds_and_outcomes_lists() -> None:
    values = _section("Attribute values")
    kinds = re.search(r"`exitstack\.callback\.kind`:(.*?)\n- ", values, re.DOTALL)
    outcomes = re.search(r"`exitstack\.callback\.outcome`:(.*?)\n- ", values, re.DOTALL)
    unwind = re.search(r"`exitstack\.unwind\.outcome`:(.*?)\n\n", values, re.DOTALL)
    assert kinds
    assert outcomes
    assert unwind
    assert [token for token in _backticked(kinds.group(1)) if "(" not in token] == list(semconv.KINDS)
    assert [token for token in _backticked(outcomes.group(1)) if "." not in token] == list(semconv.OUTCOMES)
    assert _backticked(unwind.group(1)) == [
        semconv.OUTCOME_OK,
        semconv.OUTCOME_ERROR,
        semconv.OUTCOME_CANCELLED,
    ]


def test_bucket_boundaries() -> None:
    metrics = _section("Metrics")
    durations, counts = re.findall(r"\(([\d., ]+)\)|callbacks per unwind ([\d, ]+)\.", metrics)
    assert tuple(float(value) for value in durations[0].split(",")) == semconv.DURATION_BUCKETS
    assert tuple(float(value) for value in counts[1].split(",")) == semconv.CALLBACK_COUNT_BUCKETS


def _metric_rows() -> dict[str, tuple[str, str, set[str]]]:
    rows = {}
    for name, instrument, unit, attributes in _table(_section("Metrics")):
        rows[name.strip("`")] = (instrument, unit.strip("`"), set(_backticked(attributes)))
    return rows


def test_metrics_table_names_every_metric_and_prometheus_series() -> None:
    assert list(_metric_rows()) == list(semconv.METRICS)
    prometheus = {row[0].strip("`") for row in _table(_section("In Prometheus"))}
    assert set(semconv.METRICS) <= prometheus


@pytest.mark.anyio
async def test_sdk_output_matches_the_metrics_table(sdk: Sdk) -> None:
    telemetry = sdk.telemetry()
    stack = InstrumentedAsyncExitStack("s", telemetry=telemetry)
    stack.route, stack.method = "/x", "GET"
    stack.callback(divmod, 1, 0)
    with pytest.raises(ZeroDivisionError):
        await stack.aclose()
    rows = _metric_rows()
    found = sdk.metrics()
    assert set(found) == set(rows)
    for name, metric in found.items():
        instrument, unit, documented_attributes = rows[name]
        assert metric.unit == unit, name
        for point in metric.data.data_points:
            assert set(attrs(point)) <= documented_attributes, name
        kind = type(metric.data).__name__
        expected_kind = {
            "Histogram": "Histogram",
            "Counter (observable)": "Sum",
            "UpDownCounter (observable)": "Sum",
        }
        assert kind == expected_kind[instrument], name
        if kind == "Sum":
            assert metric.data.is_monotonic == instrument.startswith("Counter"), name  # type: ignore[union-attr]
