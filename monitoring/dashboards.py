"""The "Request cleanup" Grafana dashboard, built from the telemetry contract's Prometheus names.

No stack name is written into a query: the Stack variable lists what services report (a FastAPI app has
up to three stacks per request, the plain middleware one of its own name), and the per-route panels
break down by stack, so "callbacks per unwind" is per stack, never an average over a request's stacks."""

from __future__ import annotations

from typing import Any

from . import config as c
from . import promql as q
from .panels import PROM, TEMPO, column, datasource_variable, layout, panel, target, variable

SERVICE_SEL = f'{c.SERVICE}=~"$service", instance=~"$instance"'
CALLBACK_SEL = f'{SERVICE_SEL}, {c.STACK}=~"$stack", {c.CALLBACK}=~"$callback"'
UNWIND_SEL = f'{SERVICE_SEL}, {c.STACK}=~"$stack", {c.ROUTE}=~"$route"'
STACK_SEL = f'{SERVICE_SEL}, {c.STACK}=~"$stack"'

RUNS = f"{c.CALLBACK_DURATION}_count{{{CALLBACK_SEL}}}"
FAILED_RUNS = f"{c.CALLBACK_DURATION}_count{{{CALLBACK_SEL}, {c.FAILED_OUTCOMES}}}"
BY_CALLBACK = f"{c.SERVICE}, {c.CALLBACK}"
# per service too: under "All" two services' /items are two lines, never one
BY_ROUTE = f"{c.SERVICE}, {c.ROUTE}, {c.STACK}"
BY_INSTANCE = f"{c.SERVICE}, instance, {c.STACK}"

TRACES_OF_CALLBACK = (
    '/explore?schemaVersion=1&panes={"traces":{"datasource":"' + c.TEMPO_UID + '","queries":[{"refId":"A",'
    '"datasource":{"type":"tempo","uid":"' + c.TEMPO_UID + '"},"queryType":"traceql",'
    '"query":"{ span.exitstack.callback.name = \\"${__field.labels.exitstack_callback_name}\\" }"}],'
    '"range":{"from":"${__from}","to":"${__to}"}}}'
)
CALLBACK_LINKS = [
    {"title": "Traces of ${__field.labels.exitstack_callback_name} in Tempo", "url": TRACES_OF_CALLBACK}
]


def _ratio(by: str) -> str:
    return q.ratio(FAILED_RUNS, RUNS, by)


def _stats() -> list[dict[str, Any]]:
    return [
        panel(
            "Cleanup error ratio",
            f"Share of all cleanup runs that raised, were cancelled or timed out; red at the alert's "
            f"{c.ERROR_RATIO_THRESHOLD:.0%}.",
            "stat",
            [target(_ratio(c.SERVICE), "{{job}}")],
            unit="percentunit",
            alert_threshold=c.ERROR_RATIO_THRESHOLD,
        ),
        panel(
            "Failed cleanups per second",
            "How many cleanup runs fail right now, all callbacks together; orange at any failure.",
            "stat",
            [target(f"{q.rate(FAILED_RUNS, c.SERVICE)}\nor\n{q.rate(RUNS, c.SERVICE)} * 0", "{{job}}")],
            unit="ops",
            steps=(("orange", 0.0001),),
        ),
        panel(
            "Unwinds in progress",
            "Unwinds started and not finished, per service. A value that never returns to 0 is a stuck "
            "cleanup (the panel below says which instance).",
            "stat",
            [target(f"sum by ({c.SERVICE}) ({c.UNWIND_ACTIVE}{{{STACK_SEL}}})", "{{job}}")],
        ),
        panel(
            "Pushed, never run (time range)",
            "Callbacks pushed in the time range that did not run: what they were to release leaked. "
            f"Counted once they have not run for {c.NEVER_RUN_PANEL_SETTLE}: requests in flight are not "
            "leaks. "
            "Red from one, as the alert counts.",
            "stat",
            [target(f"sum(\n{q.never_run('$__range', BY_INSTANCE + ', ' + c.CALLBACK, CALLBACK_SEL)}\n)")],
            steps=(("red", c.NEVER_RUN_MIN_LEAKED),),
            decimals=0,
        ),
        panel(
            "Telemetry arriving",
            "Seconds since each instance's last point. Red when older than the alerts' liveness window: the "
            "cleanup alerts are blind for it.",
            "stat",
            [
                target(
                    q.seconds_since_last_point(SERVICE_SEL, f"{c.SERVICE}, instance"), "{{job}} {{instance}}"
                )
            ],
            unit="s",
            steps=(("red", _seconds(c.LIVENESS_WINDOW)),),
            no_value="nothing for 5 minutes",
        ),
    ]


def _seconds(duration: str) -> float:
    return float(duration[:-1]) * {"s": 1, "m": 60, "h": 3600}[duration[-1]]


def _callback_panels() -> list[dict[str, Any]]:
    return [
        panel(
            "Cleanup errors per second by callback",
            "Which callback fails, and with which exception type.",
            "timeseries",
            [
                target(
                    q.rate(FAILED_RUNS, f"{BY_CALLBACK}, {c.ERROR_TYPE}"),
                    "{{job}} {{exitstack_callback_name}} {{error_type}}",
                )
            ],
            unit="ops",
            links=CALLBACK_LINKS,
        ),
        panel(
            "Cleanup error ratio by callback",
            f"Share of each callback's runs that failed; the alert fires above "
            f"{c.ERROR_RATIO_THRESHOLD:.0%}.",
            "timeseries",
            [target(_ratio(BY_CALLBACK), "{{job}} {{exitstack_callback_name}}")],
            unit="percentunit",
            links=CALLBACK_LINKS,
            alert_threshold=c.ERROR_RATIO_THRESHOLD,
        ),
        panel(
            "Callback duration p50 / p95 / p99 by callback",
            "How long each cleanup takes; p99 points (exemplars) open the trace of one slow run in Tempo.",
            "timeseries",
            [
                target(
                    q.quantile(0.5, c.CALLBACK_DURATION, CALLBACK_SEL, BY_CALLBACK),
                    "p50 {{job}} {{exitstack_callback_name}}",
                ),
                target(
                    q.quantile(0.95, c.CALLBACK_DURATION, CALLBACK_SEL, BY_CALLBACK),
                    "p95 {{job}} {{exitstack_callback_name}}",
                    "B",
                ),
                target(
                    q.quantile(0.99, c.CALLBACK_DURATION, CALLBACK_SEL, BY_CALLBACK),
                    "p99 {{job}} {{exitstack_callback_name}}",
                    "C",
                    exemplar=True,
                ),
            ],
            unit="s",
            links=CALLBACK_LINKS,
            alert_threshold=c.SLOW_P99_SECONDS,
        ),
        panel(
            "Callback duration heatmap",
            "Where cleanup durations cluster, and whether a slow tail appears.",
            "heatmap",
            [
                target(
                    q.rate(f"{c.CALLBACK_DURATION}_bucket{{{CALLBACK_SEL}}}", "le"),
                    "{{le}}",
                    format="heatmap",
                )
            ],
            unit="s",
            options={"calculate": False, "yAxis": {"unit": "s"}},
        ),
    ]


def _unwind_panels() -> list[dict[str, Any]]:
    return [
        panel(
            "Unwind duration by route and stack",
            "How long the cleanup of each stack of a request takes, per route (p50, p95, p99). A FastAPI "
            "request unwinds up to three stacks; each is its own line.",
            "timeseries",
            [
                target(
                    q.quantile(quantile, c.UNWIND_DURATION, UNWIND_SEL, BY_ROUTE),
                    f"p{quantile * 100:g} {{{{job}}}} {{{{http_route}}}} {{{{exitstack_stack_name}}}}",
                    ref,
                )
                for quantile, ref in ((0.5, "A"), (0.95, "B"), (0.99, "C"))
            ],
            unit="s",
        ),
        panel(
            "Callbacks per unwind by route and stack",
            "How much cleanup each stack of a request runs: average and p95 callbacks per unwind, per stack "
            "(unwinds that ran no callbacks record nothing and are not counted; the p95 is rounded up to the "
            "bucket's top, the true count up to 5).",
            "timeseries",
            [
                target(
                    f"{q.rate(f'{c.UNWIND_CALLBACKS}_sum{{{UNWIND_SEL}}}', BY_ROUTE)}\n/\n"
                    f"{q.rate(f'{c.UNWIND_CALLBACKS}_count{{{UNWIND_SEL}}}', BY_ROUTE)}",
                    "avg {{job}} {{http_route}} {{exitstack_stack_name}}",
                ),
                target(
                    q.count_quantile(0.95, c.UNWIND_CALLBACKS, UNWIND_SEL, BY_ROUTE),
                    "p95 {{job}} {{http_route}} {{exitstack_stack_name}}",
                    "B",
                ),
            ],
            decimals=1,
        ),
        panel(
            "Pushed but never executed by callback",
            f"Callbacks pushed within the last {c.NEVER_RUN_PANEL_WINDOW} that have not run for "
            f"{c.NEVER_RUN_PANEL_SETTLE} (requests in flight are not counted): above 0 it means stacks that "
            "are never unwound.",
            "timeseries",
            [
                target(
                    q.never_run(c.NEVER_RUN_PANEL_WINDOW, f"{BY_CALLBACK}, instance, {c.KIND}", CALLBACK_SEL),
                    "{{job}} {{exitstack_callback_name}} {{instance}}",
                )
            ],
            links=CALLBACK_LINKS,
            decimals=0,
        ),
        panel(
            "Unwinds in progress by instance",
            "Unwinds running now per instance and stack, and how many more are in progress than finish (the "
            "stuck-unwind alert's estimate of hung ones, 0 when every unwind ends; red at its threshold).",
            "timeseries",
            [
                target(
                    f"sum by ({BY_INSTANCE}) ({c.UNWIND_ACTIVE}{{{STACK_SEL}}})",
                    "in progress {{job}} {{instance}} {{exitstack_stack_name}}",
                ),
                target(
                    q.hung(BY_INSTANCE, STACK_SEL), "hung {{job}} {{instance}} {{exitstack_stack_name}}", "B"
                ),
            ],
            alert_threshold=c.STUCK_UNWINDS_THRESHOLD,
        ),
    ]


def _table() -> dict[str, Any]:
    failures = q.count_over(FAILED_RUNS, BY_CALLBACK, "$__range")
    # the TABLE_TOP_N callbacks with the most failures; the other columns for the same callbacks
    top = f"topk({c.TABLE_TOP_N},\n{failures}\n)"
    runs = q.count_over(RUNS, BY_CALLBACK, "$__range")
    p99 = (
        f"histogram_quantile(0.99, sum by ({BY_CALLBACK}, le) "
        f"(increase({c.CALLBACK_DURATION}_bucket{{{CALLBACK_SEL}}}[$__range])))"
    )
    return panel(
        "Slowest and most failing callbacks",
        f"The {c.TABLE_TOP_N} callbacks with the most failed runs over the time range: failures, error ratio "
        "and p99 duration. Click a name for its traces.",
        "table",
        [
            target(top, ref="failures", instant=True, format="table"),
            target(
                f"(\n{failures}\n/\n{runs}\n)\nand on ({BY_CALLBACK})\n{top}",
                ref="ratio",
                instant=True,
                format="table",
            ),
            target(f"{p99}\nand on ({BY_CALLBACK})\n{top}", ref="p99", instant=True, format="table"),
        ],
        links=CALLBACK_LINKS,
        options={"sortBy": [{"displayName": "failed runs", "desc": True}]},
        transformations=[
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True},
                    "renameByName": {
                        "Value #failures": "failed runs",
                        "Value #ratio": "error ratio",
                        "Value #p99": "p99",
                        "exitstack_callback_name": "callback",
                        "job": "service",
                    },
                },
            },
        ],
        overrides=[
            column("failed runs", unit="short", decimals=0),
            column("error ratio", unit="percentunit", decimals=2),
            column("p99", unit="s", decimals=3),
        ],
    )


def _traces() -> dict[str, Any]:
    return panel(
        "Failed and slow cleanups (traces)",
        "The latest traces with a failed or slow cleanup callback, straight from Tempo.",
        "table",
        [
            {
                "datasource": TEMPO,
                "refId": "A",
                "queryType": "traceql",
                "limit": 20,
                "query": '{ name =~ "exitstack.callback.*" && span.exitstack.callback.name =~ "$callback" }',
            }
        ],
        datasource=TEMPO,
    )


def _variables() -> list[dict[str, Any]]:
    service = f'{c.SERVICE}=~"$service"'
    return [
        datasource_variable(),
        variable("service", "Service", f"label_values({c.UNWIND_ACTIVE}, {c.SERVICE})"),
        variable("instance", "Instance", f"label_values({c.UNWIND_ACTIVE}{{{service}}}, instance)"),
        variable("stack", "Stack", f"label_values({c.UNWIND_ACTIVE}{{{service}}}, {c.STACK})"),
        variable("route", "Route", f"label_values({c.UNWIND_DURATION}_count{{{service}}}, {c.ROUTE})"),
        variable("callback", "Callback", f"label_values({c.CALLBACK_PUSHED}{{{service}}}, {c.CALLBACK})"),
    ]


def request_cleanup_dashboard() -> dict[str, Any]:
    return {
        "uid": c.DASHBOARD_UID,
        "title": c.DASHBOARD_TITLE,
        "description": "Request-scoped cleanup (AsyncExitStack callbacks): failures, timing, leaks. "
        "Names: docs/telemetry.md.",
        "tags": ["exitstack-otel", "cleanup"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-30m", "to": "now"},
        "templating": {"list": _variables()},
        "annotations": {
            "list": [
                {
                    "name": "Cleanup alerts",
                    "datasource": PROM,
                    "enable": True,
                    "iconColor": "red",
                    "expr": 'ALERTS{alertname=~"Exitstack.*", alertstate="firing"}',
                    "titleFormat": "{{alertname}}",
                    "textFormat": "{{exitstack_callback_name}}",
                    "step": "60s",
                }
            ]
        },
        "panels": layout([*_stats(), *_callback_panels(), *_unwind_panels(), _table(), _traces()]),
    }


def dashboards() -> dict[str, dict[str, Any]]:
    return {"request-cleanup.json": request_cleanup_dashboard()}
