"""Prometheus alert rules on the cleanup telemetry, built from the values in config.py."""

from __future__ import annotations

from typing import Any

from . import config as c

BY = ", ".join(c.ALERT_BY)
NEVER_RUN_BY = f"{BY}, {c.KIND}"


def _runbook(anchor: str) -> str:
    return f"{c.RUNBOOK_BASE_URL}#{anchor}"


def failing_expr(window: str = c.ALERT_RATE_WINDOW) -> str:
    failed = f"sum by ({BY}) (rate({c.CALLBACK_DURATION}_count{{{c.FAILED_OUTCOMES}}}[{window}]))"
    runs = f"sum by ({BY}) (rate({c.CALLBACK_DURATION}_count[{window}]))"
    return f"{failed}\n/\n{runs}\n> {c.ERROR_RATIO_THRESHOLD:g}"


def slow_expr(window: str = c.ALERT_RATE_WINDOW) -> str:
    buckets = f"sum by ({BY}, le) (rate({c.CALLBACK_DURATION}_bucket[{window}]))"
    return f"histogram_quantile(0.99, {buckets})\n> {c.SLOW_P99_SECONDS:g}"


def stuck_expr() -> str:
    by = f"{c.SERVICE}, instance, {c.STACK}"
    in_progress = f"sum by ({by}) (avg_over_time({c.UNWIND_ACTIVE}[{c.STUCK_WINDOW}]))"
    finished = f"sum by ({by}) (rate({c.UNWIND_DURATION}_sum[{c.STUCK_WINDOW}]))"
    # an instance whose every unwind hangs has no finished ones at all: count that as zero
    return f"{in_progress}\n- ({finished} or {in_progress} * 0)\n> {c.STUCK_UNWINDS_THRESHOLD:g}"


def never_run_expr() -> str:
    pushed = f"sum by ({NEVER_RUN_BY}) (increase({c.CALLBACK_PUSHED}[{c.NEVER_RUN_WINDOW}]))"
    ran = f"sum by ({NEVER_RUN_BY}) (increase({c.CALLBACK_DURATION}_count[{c.NEVER_RUN_WINDOW}]))"
    # a callback that never ran at all has no duration series: count it as zero runs, not as no data
    return f"({pushed}\n - ({ran} or {pushed} * 0))\n/ {pushed}\n> {c.NEVER_RUN_RATIO_THRESHOLD:g}"


def alert_rules() -> dict[str, Any]:
    callback = "{{ $labels.exitstack_callback_name }}"
    where = "{{ $labels.job }} (stack {{ $labels.exitstack_stack_name }})"
    rules = [
        {
            "alert": "ExitstackCleanupCallbacksFailing",
            "expr": failing_expr(),
            "for": c.ERROR_FOR,
            "labels": {"severity": "critical"},
            "annotations": {
                "summary": f"Cleanup callback {callback} fails in {{{{ $labels.job }}}}",
                "description": f"{{{{ $value | humanizePercentage }}}} of the runs of {callback} in {where} "
                f"raised, were cancelled or timed out over the last {c.ALERT_RATE_WINDOW} "
                f"(threshold {c.ERROR_RATIO_THRESHOLD:.0%}). What it was meant to release may be leaking.",
                "runbook_url": _runbook("exitstackcleanupcallbacksfailing"),
            },
        },
        {
            "alert": "ExitstackCleanupSlow",
            "expr": slow_expr(),
            "for": c.SLOW_FOR,
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": f"Cleanup callback {callback} is slow in {{{{ $labels.job }}}}",
                "description": f"p99 of {callback} in {where} is {{{{ $value | humanizeDuration }}}} over "
                f"the last {c.ALERT_RATE_WINDOW} (threshold {c.SLOW_P99_SECONDS:g} s).",
                "runbook_url": _runbook("exitstackcleanupslow"),
            },
        },
        {
            "alert": "ExitstackUnwindsStuck",
            "expr": stuck_expr(),
            "for": c.STUCK_FOR,
            "labels": {"severity": "critical"},
            "annotations": {
                "summary": "Request cleanup is stuck in {{ $labels.job }}",
                "description": "{{ $labels.job }} ({{ $labels.instance }}) has had "
                '{{ $value | printf "%.1f" }} more unwinds of stack {{ $labels.exitstack_stack_name }} '
                f"in progress over the last {c.STUCK_WINDOW} than finished: a cleanup callback is waiting "
                "and never returns.",
                "runbook_url": _runbook("exitstackunwindsstuck"),
            },
        },
        {
            "alert": "ExitstackCallbacksNeverRun",
            "expr": never_run_expr(),
            "for": c.NEVER_RUN_FOR,
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": f"Cleanup callback {callback} is pushed but not run in {{{{ $labels.job }}}}",
                "description": f"{{{{ $value | humanizePercentage }}}} of the pushes of {callback} in "
                f"{where} did not run within {c.NEVER_RUN_WINDOW} "
                f"(threshold {c.NEVER_RUN_RATIO_THRESHOLD:.0%}): its stack is not being unwound.",
                "runbook_url": _runbook("exitstackcallbacksneverrun"),
            },
        },
    ]
    return {"groups": [{"name": "exitstack-cleanup", "rules": rules}]}
