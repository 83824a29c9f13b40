"""Prometheus alert rules on the cleanup telemetry and on the pipeline that carries it, built from the
values in config.py."""

from __future__ import annotations

from typing import Any

from . import config as c
from . import promql
from .links import dashboard_url, runbook_url

BY = ", ".join(c.ALERT_BY)
NEVER_RUN_BY = f"{c.SERVICE}, instance, {c.STACK}, {c.CALLBACK}, {c.KIND}"
STUCK_BY = f"{c.SERVICE}, instance, {c.STACK}"


def _ratio(window: str) -> str:
    failed = f"sum by ({BY}) (rate({c.CALLBACK_DURATION}_count{{{c.FAILED_OUTCOMES}}}[{window}]))"
    runs = f"sum by ({BY}) (rate({c.CALLBACK_DURATION}_count[{window}]))"
    return f"{failed}\n/\n{runs}"


def failing_expr() -> str:
    failed_runs = (
        f"sum by ({BY}) (increase({c.CALLBACK_DURATION}_count{{{c.FAILED_OUTCOMES}}}[{c.ERROR_LONG_WINDOW}]))"
    )
    return (
        f"(\n{_ratio(c.ALERT_RATE_WINDOW)}\n> {c.ERROR_RATIO_THRESHOLD:g}\n)\n"
        f"and\n(\n{_ratio(c.ERROR_LONG_WINDOW)}\n> {c.ERROR_RATIO_THRESHOLD:g}\n)\n"
        f"and\n{failed_runs} >= {c.ERROR_MIN_FAILED_RUNS}"
    )


def slow_expr() -> str:
    window = c.ALERT_RATE_WINDOW
    buckets = f"sum by ({BY}, le) (rate({c.CALLBACK_DURATION}_bucket[{window}]))"
    runs = f'sum by ({BY}) (increase({c.CALLBACK_DURATION}_bucket{{le="+Inf"}}[{window}]))'
    return f"histogram_quantile(0.99, {buckets})\n> {c.SLOW_P99_SECONDS:g}\nand\n{runs} >= {c.SLOW_MIN_RUNS}"


def alive(by: str) -> str:
    """Series of the instances that sent exitstack.unwind.active within the liveness window."""
    return f"group by ({by}) (present_over_time({c.UNWIND_ACTIVE}[{c.LIVENESS_WINDOW}]))"


def stuck_expr() -> str:
    in_progress = f"sum by ({STUCK_BY}) (avg_over_time({c.UNWIND_ACTIVE}[{c.STUCK_WINDOW}]))"
    finished = f"sum by ({STUCK_BY}) (rate({c.UNWIND_DURATION}_sum[{c.STUCK_WINDOW}]))"
    # judged once its series cover the whole window: rate() divides by the window, so a busy instance
    # that started within it (a deploy, a restart) reads as finishing less than it does
    old_enough = f"group by ({STUCK_BY}) ({c.UNWIND_ACTIVE} offset {c.STUCK_WINDOW})"
    # an instance whose every unwind hangs has no finished ones at all: count that as zero; an instance
    # that is gone (killed with unwinds in flight) is not stuck, whatever its last values say
    return (
        f"(\n{in_progress}\n- ({finished} or {in_progress} * 0)\n> {c.STUCK_UNWINDS_THRESHOLD:g}\n)\n"
        f"and\n{alive(STUCK_BY)}\nand\n{old_enough}"
    )


def never_run_expr() -> str:
    # pushes minus runs is what is in flight plus what is lost; what is in flight never drops below what
    # the traffic holds open, also in a worker started within the hour (whose gap an hour ago is not
    # there to subtract). The lowest gap over the last NEVER_RUN_SETTLE, less the lowest over the hour:
    # steady traffic cancels, a callback lost for NEVER_RUN_SETTLE raises the first and not the second
    pending = promql.gap(NEVER_RUN_BY, "")
    settled = f"min_over_time((\n{pending}\n)[{c.NEVER_RUN_SETTLE}:1m])"
    lowest = f"min_over_time((\n{pending}\n)[{c.NEVER_RUN_WINDOW}:1m])"
    return f"{settled}\n-\n{lowest}\n> {c.NEVER_RUN_MIN_LEAKED:g}"


def telemetry_stopped_expr() -> str:
    seen = f"group by ({c.SERVICE}) (present_over_time({c.UNWIND_ACTIVE}[{c.TELEMETRY_STOPPED_LOOKBACK}]))"
    return f"{seen}\nunless\n{alive(c.SERVICE)}"


def collector_down_expr() -> str:
    up = f'up{{job="{c.COLLECTOR_JOB}"}}'
    # a scrape job that was removed or renamed is as silent as a dead Collector: its up series was there
    # within the lookback and is gone. A deployment without a Collector never had one, and is not paged.
    gone = f"last_over_time({up}[{c.COLLECTOR_SEEN_LOOKBACK}]) unless {up}"
    return f"{up} == 0\nor\n{gone}"


def per_signal(counters: dict[str, str], by: str) -> str:
    """The summed rate of several counters, each tagged with a `signal` label: counters that differ only
    in their name would collide once rate() drops it."""
    tagged = "\nor\n".join(
        f'label_replace(rate({name}[{c.ALERT_RATE_WINDOW}]), "signal", "{signal}", "", "")'
        for signal, name in counters.items()
    )
    return f"sum by ({by}, signal) (\n{tagged}\n)"


def _cleanup_rules() -> list[dict[str, Any]]:
    callback = "{{ $labels.exitstack_callback_name }}"
    where = "{{ $labels.job }} (stack {{ $labels.exitstack_stack_name }})"
    return [
        {
            "alert": "ExitstackCleanupCallbacksFailing",
            "expr": failing_expr(),
            "for": c.ERROR_FOR,
            "labels": {"severity": "critical"},
            "annotations": {
                "summary": f"Cleanup callback {callback} fails in {{{{ $labels.job }}}}",
                "description": f"{{{{ $value | humanizePercentage }}}} of the runs of {callback} in {where} "
                f"raised, were cancelled or timed out over the last {c.ALERT_RATE_WINDOW}, and more than "
                f"{c.ERROR_RATIO_THRESHOLD:.0%} (at least {c.ERROR_MIN_FAILED_RUNS} runs) over the last "
                f"{c.ERROR_LONG_WINDOW}. What it was meant to release may be leaking.",
                "runbook_url": runbook_url("ExitstackCleanupCallbacksFailing"),
                "dashboard_url": dashboard_url(),
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
                "runbook_url": runbook_url("ExitstackCleanupSlow"),
                "dashboard_url": dashboard_url(),
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
                "runbook_url": runbook_url("ExitstackUnwindsStuck"),
                "dashboard_url": dashboard_url(instance=True),
            },
        },
        {
            "alert": "ExitstackCallbacksNeverRun",
            "expr": never_run_expr(),
            "for": c.NEVER_RUN_FOR,
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": f"Cleanup callback {callback} is pushed but not run in {{{{ $labels.job }}}}",
                "description": f'{{{{ $value | printf "%.0f" }}}} pushes of {callback} in {where} on '
                f"{{{{ $labels.instance }}}} within the last {c.NEVER_RUN_WINDOW} have not run for "
                f"{c.NEVER_RUN_SETTLE} or more: its stack is not being unwound.",
                "runbook_url": runbook_url("ExitstackCallbacksNeverRun"),
                "dashboard_url": dashboard_url(instance=True),
            },
        },
        {
            "alert": "ExitstackTelemetryStopped",
            "expr": telemetry_stopped_expr(),
            "for": c.TELEMETRY_STOPPED_FOR,
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "{{ $labels.job }} stopped sending cleanup telemetry",
                "description": f"{{{{ $labels.job }}}} sent cleanup metrics within the last "
                f"{c.TELEMETRY_STOPPED_LOOKBACK} and none within {c.LIVENESS_WINDOW}: every cleanup alert "
                "is blind for it.",
                "runbook_url": runbook_url("ExitstackTelemetryStopped"),
                "dashboard_url": dashboard_url(),
            },
        },
    ]


def _pipeline_rules() -> list[dict[str, Any]]:
    return [
        {
            "alert": "ExitstackCollectorDown",
            "expr": collector_down_expr(),
            "for": c.TARGET_DOWN_FOR,
            "labels": {"severity": "critical"},
            "annotations": {
                "summary": "The OpenTelemetry Collector is down or not scraped",
                "description": f"Prometheus has not scraped job {c.COLLECTOR_JOB} for {c.TARGET_DOWN_FOR}: "
                "no metrics or traces arrive from any service, and every cleanup alert is blind.",
                "runbook_url": runbook_url("ExitstackCollectorDown"),
                "dashboard_url": dashboard_url(),
            },
        },
        {
            "alert": "ExitstackCollectorRefusing",
            "expr": f"{per_signal(c.COLLECTOR_REFUSED, 'job, instance, receiver')}\n> 0",
            "for": c.COLLECTOR_FOR,
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "The Collector refuses {{ $labels.signal }} ({{ $labels.receiver }})",
                "description": '{{ $labels.instance }} refused {{ $value | printf "%.1f" }} '
                "{{ $labels.signal }} items per second at receiver {{ $labels.receiver }}: its memory limit "
                "or a size limit turns data away, and the dashboards miss it.",
                "runbook_url": runbook_url("ExitstackCollectorRefusing"),
                "dashboard_url": dashboard_url(),
            },
        },
        {
            "alert": "ExitstackCollectorExportFailing",
            "expr": f"{per_signal(c.COLLECTOR_FAILED, 'job, instance, exporter')}\n> 0",
            "for": c.COLLECTOR_FOR,
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "The Collector fails to export {{ $labels.signal }} ({{ $labels.exporter }})",
                "description": '{{ $labels.instance }} failed to send {{ $value | printf "%.1f" }} '
                "{{ $labels.signal }} items per second through exporter {{ $labels.exporter }}: "
                "its backend is down, slow or refuses the data.",
                "runbook_url": runbook_url("ExitstackCollectorExportFailing"),
                "dashboard_url": dashboard_url(),
            },
        },
        {
            "alert": "MonitoringTargetDown",
            "expr": "up == 0",
            "for": c.TARGET_DOWN_FOR,
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "Prometheus cannot scrape {{ $labels.job }} ({{ $labels.instance }})",
                "description": "Scrapes of {{ $labels.instance }} (job {{ $labels.job }}) have "
                f"failed for {c.TARGET_DOWN_FOR}: what it serves is missing from the dashboards and alerts.",
                "runbook_url": runbook_url("MonitoringTargetDown"),
                "dashboard_url": dashboard_url(),
            },
        },
        {
            # always firing: the dead man's switch receiver pages when it stops arriving, which means
            # Prometheus, its rule evaluation, Alertmanager or the way out of it is broken
            "alert": "Watchdog",
            "expr": "vector(1)",
            "labels": {"severity": "none"},
            "annotations": {
                "summary": "Alerting works end to end",
                "description": "Always firing. The dead man's switch receiver expects it; when it stops "
                "arriving, alerting itself is broken.",
                "runbook_url": runbook_url("Watchdog"),
                "dashboard_url": dashboard_url(),
            },
        },
    ]


def alert_rules() -> dict[str, Any]:
    return {
        "groups": [
            {"name": "exitstack-cleanup", "rules": _cleanup_rules()},
            {"name": "exitstack-pipeline", "rules": _pipeline_rules()},
        ]
    }
