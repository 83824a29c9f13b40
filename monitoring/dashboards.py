"""The "Request cleanup" Grafana dashboard, built from the telemetry contract's Prometheus names."""

from __future__ import annotations

from typing import Any

from . import config as c

PROM = {"type": "prometheus", "uid": c.PROMETHEUS_UID}
TEMPO = {"type": "tempo", "uid": c.TEMPO_UID}

CALLBACK_SEL = f'{c.SERVICE}=~"$service", {c.STACK}=~"$stack", {c.CALLBACK}=~"$callback"'
UNWIND_SEL = f'{c.SERVICE}=~"$service", {c.STACK}=~"$stack", {c.ROUTE}=~"$route"'
STACK_SEL = f'{c.SERVICE}=~"$service", {c.STACK}=~"$stack"'
RATE = "$__rate_interval"

RUNS = f"{c.CALLBACK_DURATION}_count{{{CALLBACK_SEL}}}"
FAILED_RUNS = f"{c.CALLBACK_DURATION}_count{{{CALLBACK_SEL}, {c.FAILED_OUTCOMES}}}"

TRACES_OF_CALLBACK = (
    '/explore?schemaVersion=1&panes={"traces":{"datasource":"' + c.TEMPO_UID + '","queries":[{"refId":"A",'
    '"datasource":{"type":"tempo","uid":"' + c.TEMPO_UID + '"},"queryType":"traceql",'
    '"query":"{ span.exitstack.callback.name = \\"${__field.labels.exitstack_callback_name}\\" }"}],'
    '"range":{"from":"${__from}","to":"${__to}"}}}'
)
CALLBACK_LINKS = [
    {"title": "Traces of ${__field.labels.exitstack_callback_name} in Tempo", "url": TRACES_OF_CALLBACK}
]


def _target(expr: str, legend: str = "", ref: str = "A", **extra: Any) -> dict[str, Any]:
    return {"datasource": PROM, "expr": expr, "legendFormat": legend, "refId": ref, **extra}


def _quantile(q: float, metric: str, selector: str, by: str) -> str:
    return f"histogram_quantile({q:g}, sum by ({by}, le) (rate({metric}_bucket{{{selector}}}[{RATE}])))"


def _panel(
    title: str,
    answers: str,
    kind: str,
    targets: list[dict[str, Any]],
    *,
    unit: str = "short",
    links: list[dict[str, str]] | None = None,
    options: dict[str, Any] | None = None,
    transformations: list[dict[str, Any]] | None = None,
    datasource: dict[str, str] = PROM,
    alert_threshold: float | None = None,
) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": unit, "links": links or []}
    if alert_threshold is not None:
        # draw the alert's threshold as a red line, so the panel shows how close a callback is to paging
        defaults["thresholds"] = {
            "mode": "absolute",
            "steps": [{"color": "green", "value": None}, {"color": "red", "value": alert_threshold}],
        }
        defaults["custom"] = {"thresholdsStyle": {"mode": "line"}}
    panel: dict[str, Any] = {
        "type": kind,
        "title": title,
        "description": answers,
        "datasource": datasource,
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options or {},
    }
    if transformations:
        panel["transformations"] = transformations
    return panel


def _panels() -> list[dict[str, Any]]:
    by_callback = f"{c.SERVICE}, {c.CALLBACK}"
    return [
        _panel(
            "Cleanup error ratio",
            "Share of all cleanup runs that raised, were cancelled or timed out.",
            "stat",
            [_target(f"sum(rate({FAILED_RUNS}[{RATE}])) / sum(rate({RUNS}[{RATE}]))")],
            unit="percentunit",
        ),
        _panel(
            "Failed cleanups per second",
            "How many cleanup runs fail right now, all callbacks together.",
            "stat",
            [_target(f"sum(rate({FAILED_RUNS}[{RATE}]))")],
            unit="ops",
        ),
        _panel(
            "Unwinds in progress",
            "Unwinds started and not finished, all instances. A value that never returns to 0 is a stuck "
            "cleanup.",
            "stat",
            [_target(f"sum({c.UNWIND_ACTIVE}{{{STACK_SEL}}})")],
        ),
        _panel(
            "Pushed, never run (time range)",
            "Callbacks pushed in the time range that did not run: what they were to release leaked.",
            "stat",
            [_target(_never_run("$__range", ""))],
        ),
        _panel(
            "Cleanup errors per second by callback",
            "Which callback fails, and with which exception type.",
            "timeseries",
            [
                _target(
                    f"sum by ({by_callback}, {c.ERROR_TYPE}) (rate({FAILED_RUNS}[{RATE}]))",
                    "{{exitstack_callback_name}} {{error_type}}",
                )
            ],
            unit="ops",
            links=CALLBACK_LINKS,
        ),
        _panel(
            "Cleanup error ratio by callback",
            f"Share of each callback's runs that failed; the alert fires above "
            f"{c.ERROR_RATIO_THRESHOLD:.0%}.",
            "timeseries",
            [
                _target(
                    f"sum by ({by_callback}) (rate({FAILED_RUNS}[{RATE}]))\n/\n"
                    f"sum by ({by_callback}) (rate({RUNS}[{RATE}]))",
                    "{{exitstack_callback_name}}",
                )
            ],
            unit="percentunit",
            links=CALLBACK_LINKS,
            alert_threshold=c.ERROR_RATIO_THRESHOLD,
        ),
        _panel(
            "Callback duration p50 / p95 / p99 by callback",
            "How long each cleanup takes; p99 points (exemplars) open the trace of one slow run in Tempo.",
            "timeseries",
            [
                _target(
                    _quantile(0.5, c.CALLBACK_DURATION, CALLBACK_SEL, by_callback),
                    "p50 {{exitstack_callback_name}}",
                ),
                _target(
                    _quantile(0.95, c.CALLBACK_DURATION, CALLBACK_SEL, by_callback),
                    "p95 {{exitstack_callback_name}}",
                    "B",
                ),
                _target(
                    _quantile(0.99, c.CALLBACK_DURATION, CALLBACK_SEL, by_callback),
                    "p99 {{exitstack_callback_name}}",
                    "C",
                    exemplar=True,
                ),
            ],
            unit="s",
            links=CALLBACK_LINKS,
            alert_threshold=c.SLOW_P99_SECONDS,
        ),
        _panel(
            "Callback duration heatmap",
            "Where cleanup durations cluster, and whether a slow tail appears.",
            "heatmap",
            [
                _target(
                    f"sum by (le) (rate({c.CALLBACK_DURATION}_bucket{{{CALLBACK_SEL}}}[{RATE}]))",
                    "{{le}}",
                    format="heatmap",
                )
            ],
            unit="s",
            options={"calculate": False, "yAxis": {"unit": "s"}},
        ),
        _panel(
            "Unwind duration by route",
            "How long the whole cleanup of a request takes, per route (p50, p95, p99).",
            "timeseries",
            [
                _target(
                    _quantile(q, c.UNWIND_DURATION, UNWIND_SEL, c.ROUTE),
                    f"p{q * 100:g} {{{{http_route}}}}",
                    ref,
                )
                for q, ref in ((0.5, "A"), (0.95, "B"), (0.99, "C"))
            ],
            unit="s",
        ),
        _panel(
            "Callbacks per request by route",
            "How much cleanup each request leaves behind: average and p95 callbacks per unwind.",
            "timeseries",
            [
                _target(
                    f"sum by ({c.ROUTE}) (rate({c.UNWIND_CALLBACKS}_sum{{{UNWIND_SEL}}}[{RATE}]))\n/\n"
                    f"sum by ({c.ROUTE}) (rate({c.UNWIND_CALLBACKS}_count{{{UNWIND_SEL}}}[{RATE}]))",
                    "avg {{http_route}}",
                ),
                _target(_quantile(0.95, c.UNWIND_CALLBACKS, UNWIND_SEL, c.ROUTE), "p95 {{http_route}}", "B"),
            ],
        ),
        _panel(
            "Pushed but never executed by callback",
            "Pushes minus runs per callback over 5 minutes; above a few in-flight requests it means stacks "
            "that are never unwound.",
            "timeseries",
            [_target(_never_run("5m", f"{by_callback}, {c.KIND}"), "{{exitstack_callback_name}}")],
            links=CALLBACK_LINKS,
        ),
        _panel(
            "Unwinds in progress by stack",
            "Unwinds running now per service and stack, and how many more are in progress than finish "
            "(the stuck-unwind alert's estimate of hung ones, 0 when every unwind ends).",
            "timeseries",
            [
                _target(
                    f"sum by ({c.SERVICE}, {c.STACK}) ({c.UNWIND_ACTIVE}{{{STACK_SEL}}})",
                    "in progress {{job}} {{exitstack_stack_name}}",
                ),
                _target(_hung(), "hung {{job}} {{exitstack_stack_name}}", "B"),
            ],
        ),
        _panel(
            "Slowest and most failing callbacks",
            "Each callback over the time range: p99 duration, failed runs and error ratio; sorted by "
            "failures. Click a name for its traces.",
            "table",
            [
                _target(
                    f"histogram_quantile(0.99, sum by ({by_callback}, le) "
                    f"(increase({c.CALLBACK_DURATION}_bucket{{{CALLBACK_SEL}}}[$__range])))",
                    ref="p99",
                    instant=True,
                    format="table",
                ),
                _target(
                    f"sum by ({by_callback}) (increase({FAILED_RUNS}[$__range]))",
                    ref="failures",
                    instant=True,
                    format="table",
                ),
                _target(
                    f"sum by ({by_callback}) (increase({FAILED_RUNS}[$__range]))\n/\n"
                    f"sum by ({by_callback}) (increase({RUNS}[$__range]))",
                    ref="ratio",
                    instant=True,
                    format="table",
                ),
            ],
            links=CALLBACK_LINKS,
            options={"sortBy": [{"displayName": "Value #failures", "desc": True}]},
            transformations=[{"id": "merge", "options": {}}],
        ),
        _panel(
            "Failed and slow cleanups (traces)",
            "The latest traces with a failed or slow cleanup callback, straight from Tempo.",
            "table",
            [
                {
                    "datasource": TEMPO,
                    "refId": "A",
                    "queryType": "traceql",
                    "limit": 20,
                    "query": '{ name =~ "exitstack.callback.*" '
                    '&& span.exitstack.callback.name =~ "$callback" }',
                }
            ],
            datasource=TEMPO,
        ),
    ]


def _hung() -> str:
    # as in the ExitstackUnwindsStuck rule, over the dashboard's rate window
    by = f"{c.SERVICE}, {c.STACK}"
    in_progress = f"sum by ({by}) (avg_over_time({c.UNWIND_ACTIVE}{{{STACK_SEL}}}[{RATE}]))"
    finished = f"sum by ({by}) (rate({c.UNWIND_DURATION}_sum{{{STACK_SEL}}}[{RATE}]))"
    return f"{in_progress}\n- ({finished} or {in_progress} * 0)"


def _never_run(window: str, by: str) -> str:
    pushed = f"sum by ({by}) (increase({c.CALLBACK_PUSHED}{{{CALLBACK_SEL}}}[{window}]))"
    ran = f"sum by ({by}) (increase({RUNS}[{window}]))"
    return f"{pushed}\n- ({ran} or {pushed} * 0)"


def _layout(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # four stats across the top, then two wide panels per row
    y = 0
    for index, panel in enumerate(panels):
        panel["id"] = index + 1
        if panel["type"] == "stat":
            panel["gridPos"] = {"h": 4, "w": 6, "x": 6 * index, "y": 0}
            y = 4
            continue
        column = (index - 4) % 2
        panel["gridPos"] = {"h": 8, "w": 12, "x": 12 * column, "y": y}
        if column == 1:
            y += 8
    return panels


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": PROM,
        "query": {"query": query, "refId": f"{name}-values"},
        "definition": query,
        "refresh": 2,  # on time range change: new services and callbacks appear without a reload
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


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
        "templating": {
            "list": [
                _variable("service", "Service", f"label_values({c.UNWIND_ACTIVE}, {c.SERVICE})"),
                _variable(
                    "stack", "Stack", f'label_values({c.UNWIND_ACTIVE}{{{c.SERVICE}=~"$service"}}, {c.STACK})'
                ),
                _variable(
                    "route",
                    "Route",
                    f'label_values({c.UNWIND_DURATION}_count{{{c.SERVICE}=~"$service"}}, {c.ROUTE})',
                ),
                _variable(
                    "callback",
                    "Callback",
                    f'label_values({c.CALLBACK_PUSHED}{{{c.SERVICE}=~"$service"}}, {c.CALLBACK})',
                ),
            ]
        },
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
        "panels": _layout(_panels()),
    }


def dashboards() -> dict[str, dict[str, Any]]:
    return {"request-cleanup.json": request_cleanup_dashboard()}
