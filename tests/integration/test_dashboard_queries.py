"""What the dashboard's queries show, evaluated by promtool on series made for the purpose: a new series'
first events are counted, and differences of counts never go below zero."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from monitoring import promql
from tests.conftest import require_program

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
            "series": f'exitstack_callback_duration_seconds_count{{{labels}, exitstack_callback_outcome="ok"}}',  # noqa: E501
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
    never_run = promql.never_run("5m", "job, exitstack_callback_name", 'job="shop"')
    hung = _grafana(promql.hung("job, instance, exitstack_stack_name", 'job="shop"'))
    plain = (
        "sum by (job, exitstack_callback_name) (increase(exitstack_callback_pushed_total[5m])) - "
        "sum by (job, exitstack_callback_name) (increase(exitstack_callback_duration_seconds_count[5m]))"
    )
    cases = [
        # the plain difference reads -3.75 at 11m (window 7m..11m); the panel's reads 0
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
            "exp_samples": [{"labels": pool, "value": 3.75}],
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
