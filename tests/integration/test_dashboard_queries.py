"""What the dashboard's queries show, evaluated by promtool on series made for the purpose: a new series'
first events are counted, and differences of counts never go below zero."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitoring import promql
from tests.conftest import require_program
from tests.support.stack_files import DATASOURCES, dashboards, load_yaml

# Grafana's variables as they would be at a 2-minute rate window
WINDOW = "2m"
WINDOW_SECONDS = "120"


def _grafana(expr: str) -> str:
    return expr.replace(promql.RATE_SECONDS, WINDOW_SECONDS).replace(promql.RATE, WINDOW)


def _evaluate(tmp_path: Path, series: list[dict[str, str]], cases: list[dict[str, Any]]) -> str:
    promtool = require_program("promtool")
    test = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": cases}],
    }
    path = tmp_path / "queries.test.yml"
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    result = subprocess.run(
        [promtool, "test", "rules", path.name], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_first_failure_of_a_new_series_is_counted_and_drawn(tmp_path: Path) -> None:
    # one failure of a new error type at 5m, and no other ever: rate() and increase() alone show nothing
    series = [{"series": 'failed{job="shop", error_type="Boom"}', "values": "_x5 1x10"}]
    count = promql.count_over("failed", "job", "5m")
    rate = _grafana(promql.rate("failed", "job"))
    cases = [
        {
            "expr": "sum by (job) (increase(failed[5m]))",
            "eval_time": "7m",
            "exp_samples": [{"labels": '{job="shop"}', "value": 0}],
        },
        {"expr": count, "eval_time": "7m", "exp_samples": [{"labels": '{job="shop"}', "value": 1}]},
        # one window after birth: the failure is drawn as 1 per 120 s
        {"expr": rate, "eval_time": "6m", "exp_samples": [{"labels": '{job="shop"}', "value": 1 / 120}]},
        # later, the series is old and flat: no failures per second
        {"expr": rate, "eval_time": "12m", "exp_samples": [{"labels": '{job="shop"}', "value": 0}]},
        # an old series counts with increase(), as before
        {
            "expr": promql.count_over("failed", "job", "3m"),
            "eval_time": "12m",
            "exp_samples": [{"labels": '{job="shop"}', "value": 0}],
        },
    ]
    _evaluate(tmp_path, series, cases)


def test_never_run_and_hung_do_not_go_negative_at_window_edges(tmp_path: Path) -> None:
    pool = '{job="shop", exitstack_callback_name="Pool.release"}'
    labels = 'job="shop", instance="a", exitstack_stack_name="s", exitstack_callback_name="Pool.release"'
    unwinds = 'job="shop", instance="a", exitstack_stack_name="s"'
    wobble = " ".join(str(10 * t - (3 if t % 3 == 1 else 0)) for t in range(21))
    series = [
        # every push runs; at every third minute 3 runs are still to come, so over a window that starts on
        # such a minute more ran than were pushed (Prometheus 3: the 5m window holds 5 samples, 4 intervals,
        # extrapolated by 5/4)
        {"series": f"exitstack_callback_pushed_total{{{labels}}}", "values": "0+10x20"},
        {
            "series": f'exitstack_callback_duration_seconds_count{{{labels}, exitstack_callback_outcome="ok"}}',  # noqa: E501  # noqa: E501
            "values": wobble,
        },
        # one unwind in progress at every sample, and a second of unwinding finishes per second, with jitter
        {
            "series": 'exitstack_unwind_active{job="shop", instance="a", exitstack_stack_name="s"}',
            "values": "1x20",
        },
        {
            "series": f"exitstack_unwind_duration_seconds_sum{{{unwinds}}}",
            "values": " ".join(str(60 * t + (5 if t % 3 == 1 else 0)) for t in range(21)),
        },
    ]
    never_run = promql.never_run("1h", "job, exitstack_callback_name", 'job="shop"')
    hung = _grafana(promql.hung("job, instance, exitstack_stack_name", 'job="shop"'))
    plain = (
        "sum by (job, exitstack_callback_name) (increase(exitstack_callback_pushed_total[5m])) - "
        "sum by (job, exitstack_callback_name) (increase(exitstack_callback_duration_seconds_count[5m]))"
    )
    cases = [
        # the plain difference reads -3.75 at 11m (window 7m..11m) and +3.75 at 13m (3 runs in flight);
        # the panel's reads 0 at both: no run is lost
        {
            "expr": plain,
            "eval_time": "11m",
            "exp_samples": [{"labels": pool, "value": -3.75}],
        },
        {
            "expr": never_run,
            "eval_time": "11m",
            "exp_samples": [{"labels": '{job="shop", exitstack_callback_name="Pool.release"}', "value": 0}],
        },
        {
            "expr": never_run,
            "eval_time": "13m",
            "exp_samples": [{"labels": pool, "value": 0}],
        },
        # without the clamp, 5 s of jitter in the finished sum read as -0.08 hung unwinds at 10m (the 2m
        # window holds the samples at 9m and 10m, extrapolated to 2m)
        {
            "expr": hung.removeprefix("clamp_min(\n").removesuffix(",\n0)"),
            "eval_time": "10m",
            "exp_samples": [
                {"labels": '{job="shop", instance="a", exitstack_stack_name="s"}', "value": 1 - 130 / 120}
            ],
        },
        {
            "expr": hung,
            "eval_time": "10m",
            "exp_samples": [{"labels": '{job="shop", instance="a", exitstack_stack_name="s"}', "value": 0}],
        },
    ]
    _evaluate(tmp_path, series, cases)


# --- the committed dashboard's own queries, with Grafana's variables as Grafana fills them in ---------


def _panel_exprs(title: str) -> list[str]:
    (board,) = dashboards().values()
    (panel,) = [panel for panel in board["panels"] if panel["title"] == title]
    return [target["expr"] for target in panel["targets"]]


def _grafana_rate_seconds() -> int:
    # Grafana: $__rate_interval = max(4 x min interval, step + min interval), the step never below the
    # datasource's min interval (timeInterval)
    floor = load_yaml(DATASOURCES)["datasources"][0]["jsonData"]["timeInterval"]
    seconds = int(floor.removesuffix("s"))
    return max(4 * seconds, seconds + seconds)


def _as_grafana(expr: str, time_range: str = "1h") -> str:
    seconds = _grafana_rate_seconds()
    variables = {
        "$__rate_interval_ms": str(seconds * 1000),
        "$__rate_interval": f"{seconds}s",
        "$__range": time_range,
        **{f"${name}": ".*" for name in ("service", "instance", "stack", "route", "callback")},
    }
    for name, value in variables.items():  # the _ms one first: it starts with the other's name
        expr = expr.replace(name, value)
    return expr


def _run_series(interval_seconds: int, ok: int, failed: int) -> list[dict[str, str]]:
    # `ok` and `failed` runs per export, for an hour
    exports = 3600 // interval_seconds
    labels = 'job="shop", instance="a", exitstack_stack_name="s", exitstack_callback_name="Pool.release"'
    series = [
        {
            "series": f'exitstack_callback_duration_seconds_count{{{labels}, exitstack_callback_outcome="ok"}}',  # noqa: E501
            "values": f"0+{ok}x{exports}",
        }
    ]
    if failed:
        series.append(
            {
                "series": f"exitstack_callback_duration_seconds_count{{{labels}, "
                'exitstack_callback_outcome="error", error_type="PoolError"}',
                "values": f"0+{failed}x{exports}",
            }
        )
    return series


def _rounded(expr: str, to: str = "1e-9") -> str:
    # promtool compares exactly; 0.049999999999999996 is the 5 % it shows
    return f"round(\n{expr},\n{to})"


def _evaluate_every(
    tmp_path: Path, interval: str, series: list[dict[str, str]], cases: list[dict[str, Any]]
) -> None:
    promtool = require_program("promtool")
    test = {
        "rule_files": [],
        "evaluation_interval": interval,
        "tests": [{"interval": interval, "input_series": series, "promql_expr_test": cases}],
    }
    path = tmp_path / "panels.test.yml"
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    result = subprocess.run(
        [promtool, "test", "rules", path.name], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("interval_seconds", [60, 15], ids=["sdk-default-60s", "15s"])
def test_rate_panels_show_the_truth_at_both_export_intervals(tmp_path: Path, interval_seconds: int) -> None:
    # 19 runs and 1 failure per export: 5 %, and 1 failure per export interval (x the interval: 1)
    series = _run_series(interval_seconds, ok=19, failed=1)
    (ratio,) = _panel_exprs("Cleanup error ratio")
    (per_second,) = _panel_exprs("Failed cleanups per second")
    (by_callback,) = _panel_exprs("Cleanup error ratio by callback")
    (errors,) = _panel_exprs("Cleanup errors per second by callback")
    shop = '{job="shop"}'
    callback = '{job="shop", exitstack_callback_name="Pool.release"}'
    error_labels = '{job="shop", exitstack_callback_name="Pool.release", error_type="PoolError"}'
    cases = [
        {
            "expr": _rounded(_as_grafana(ratio)),
            "eval_time": "30m",
            "exp_samples": [{"labels": shop, "value": 0.05}],
        },
        {
            "expr": _rounded(f"({_as_grafana(per_second)}) * {interval_seconds}", "1"),
            "eval_time": "30m",
            "exp_samples": [{"labels": shop, "value": 1}],
        },
        {
            "expr": _rounded(_as_grafana(by_callback)),
            "eval_time": "30m",
            "exp_samples": [{"labels": callback, "value": 0.05}],
        },
        {
            "expr": _rounded(f"({_as_grafana(errors)}) * {interval_seconds}", "1"),
            "eval_time": "30m",
            "exp_samples": [{"labels": error_labels, "value": 1}],
        },
    ]
    _evaluate_every(tmp_path, f"{interval_seconds}s", series, cases)


def test_a_service_that_never_failed_shows_zero_not_no_data(tmp_path: Path) -> None:
    series = _run_series(60, ok=20, failed=0)
    (ratio,) = _panel_exprs("Cleanup error ratio")
    (per_second,) = _panel_exprs("Failed cleanups per second")
    (by_callback,) = _panel_exprs("Cleanup error ratio by callback")
    shop = '{job="shop"}'
    cases = [
        {"expr": _as_grafana(ratio), "eval_time": "30m", "exp_samples": [{"labels": shop, "value": 0}]},
        {"expr": _as_grafana(per_second), "eval_time": "30m", "exp_samples": [{"labels": shop, "value": 0}]},
        {
            "expr": _as_grafana(by_callback),
            "eval_time": "30m",
            "exp_samples": [{"labels": '{job="shop", exitstack_callback_name="Pool.release"}', "value": 0}],
        },
    ]
    _evaluate_every(tmp_path, "1m", series, cases)


def test_p95_callbacks_per_unwind_reads_the_whole_counts(tmp_path: Path) -> None:
    # stack one: every unwind ran exactly 1 callback; stack two: exactly 2 (interpolation read 0.95 / 1.95)
    series = []
    for stack, count in (("one", 1), ("two", 2)):
        labels = f'job="shop", instance="a", exitstack_stack_name="{stack}", http_route="/items"'
        for le in ("0", "1", "2", "3", "+Inf"):
            per_export = 10 if le == "+Inf" or float(le) >= count else 0
            series.append(
                {
                    "series": f'exitstack_unwind_callbacks_bucket{{{labels}, le="{le}"}}',
                    "values": f"0+{per_export}x60",
                }
            )
    _, p95 = _panel_exprs("Callbacks per unwind by route and stack")
    cases = [
        {
            "expr": _as_grafana(p95),
            "eval_time": "30m",
            "exp_samples": [
                {
                    "labels": f'{{job="shop", http_route="/items", exitstack_stack_name="{stack}"}}',
                    "value": value,
                }
                for stack, value in (("one", 1), ("two", 2))
            ],
        }
    ]
    _evaluate_every(tmp_path, "1m", series, cases)


def test_the_whole_range_table_keeps_a_replaced_workers_failures(tmp_path: Path) -> None:
    # worker a fails once a minute from 5m to 30m (26 failures) and is replaced; b from 31m to 59m (29)
    failed = 'exitstack_callback_duration_seconds_count{{job="shop", instance="{}", exitstack_stack_name="s", exitstack_callback_name="Pool.release", exitstack_callback_outcome="error", error_type="PoolError"}}'  # noqa: E501
    series = [
        {"series": failed.format("a"), "values": "_x5 1+1x25"},
        {"series": failed.format("b"), "values": "_x31 1+1x28"},
    ]
    failures, _, _ = _panel_exprs("Slowest and most failing callbacks")
    cases = [
        {
            "expr": _as_grafana(failures, time_range="1h"),
            "eval_time": "60m",
            "exp_samples": [{"labels": '{job="shop", exitstack_callback_name="Pool.release"}', "value": 55}],
        }
    ]
    _evaluate_every(tmp_path, "1m", series, cases)


def test_pushed_never_run_counts_leaks_not_requests_in_flight(tmp_path: Path) -> None:
    labels = 'job="shop", instance="a", exitstack_stack_name="s", exitstack_callback_kind="async_callback"'
    busy = labels.replace('instance="a"', 'instance="b"')
    pushed = 'exitstack_callback_pushed_total{{{}, exitstack_callback_name="{}"}}'
    ran = 'exitstack_callback_duration_seconds_count{{{}, exitstack_callback_name="{}", exitstack_callback_outcome="ok"}}'  # noqa: E501
    series = [
        # Pool.release: healthy, 3 requests still in flight at the last export
        {"series": pushed.format(labels, "Pool.release"), "values": "0+10x30"},
        {"series": ran.format(labels, "Pool.release"), "values": "0+10x29 297"},
        # Upload.close: 1 push a minute not run from 11m to 20m (10 leaked), none after
        {"series": pushed.format(labels, "Upload.close"), "values": "0+10x30"},
        {"series": ran.format(labels, "Upload.close"), "values": "0+10x10 109+9x9 200+10x9"},
        # b: a busy worker started at 10m, 5 callbacks in flight at every export, none lost
        {"series": pushed.format(busy, "Busy.close"), "values": "_x10 15+10x20"},
        {"series": ran.format(busy, "Busy.close"), "values": "_x10 10+10x20"},
    ]
    (stat,) = _panel_exprs("Pushed, never run (time range)")
    (by_callback,) = _panel_exprs("Pushed but never executed by callback")
    cases = [
        {
            "expr": _as_grafana(stat, time_range="30m"),
            "eval_time": "30m",
            "exp_samples": [{"labels": "{}", "value": 10}],
        },
        {
            "expr": _as_grafana(by_callback),
            "eval_time": "16m",
            "exp_samples": [
                {
                    "labels": f'{{job="shop", instance="{instance}", exitstack_callback_name="{name}", exitstack_callback_kind="async_callback"}}',  # noqa: E501
                    "value": value,
                }
                for instance, name, value in (
                    ("a", "Pool.release", 0),
                    ("a", "Upload.close", 1),
                    ("b", "Busy.close", 0),
                )
            ],
        },
    ]
    _evaluate_every(tmp_path, "1m", series, cases)
