"""End to end on loopback: the demo service with its Prometheus exporter, the real Prometheus with our alert
rules, the real Alertmanager with the shipped routing, real traffic with failing and slow cleanups, and a
Collector scrape target that is down. Every dashboard query must return data from that Prometheus; the
cleanup alerts must reach Alertmanager and the pager, the Watchdog the dead man's switch, and the
Collector-down alert must hold back the target-down warning."""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import require_program
from tests.support.monitoring_stack import GRAFANA_VARIABLES, Processes, Stack, Webhook
from tests.support.processes import free_port
from tests.support.stack_files import (
    ALERTMANAGER_CONFIG,
    RULES_FILE,
    dashboards,
    documented_series,
    panel_targets,
)

pytestmark = pytest.mark.integration

SERVICE_JOB = "exitstack-otel-demo"
TRAFFIC_SECONDS = 40  # long enough to query every panel while traffic still flows
FAILURE_ALERT = "ExitstackCleanupCallbacksFailing"
SLOW_ALERT = "ExitstackCleanupSlow"
COLLECTOR_DOWN = "ExitstackCollectorDown"
TARGET_DOWN = "MonitoringTargetDown"
# slow flushes take 0.6 s, above the 0.5 s p99 threshold
DEMO = [sys.executable, "-m", "exitstack_otel", "demo", "--serve", "--slow-seconds", "0.6"]
TRAFFIC_OPTIONS = [
    *("--duration", str(TRAFFIC_SECONDS), "--rate", "40", "--concurrency", "6", "--seed", "7"),
    *("--failure-share", "0.3", "--slow-share", "0.2"),
]
# a rate needs two scrapes that saw a failed run
FAILURES_SEEN = (
    'increase(exitstack_callback_duration_seconds_count{exitstack_callback_outcome="error"}[15s]) > 0'
)


def _test_rules(directory: Path) -> Path:
    # the shipped rules, with `for` shortened so that the alerts fire within the test
    rules = re.sub(r"^(\s+for:) \S+$", r"\1 1s", RULES_FILE.read_text(), flags=re.MULTILINE)
    assert rules != RULES_FILE.read_text()
    path = directory / "rules.yml"
    path.write_text(rules)
    return path


def _test_alertmanager_config(directory: Path, webhook_url: str) -> Path:
    # the shipped routes, receivers and inhibitions; each receiver pointed at its own path of the test's
    # webhook (/team-pager, /team-tickets, /deadmans-switch), and without the grouping delays
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    for route in [config["route"], *config["route"]["routes"]]:
        route.update(group_wait="1s", group_interval="1s")
    for receiver in config["receivers"]:
        receiver["webhook_configs"][0]["url"] = f"{webhook_url}/{receiver['name']}"
    path = directory / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def _prometheus_config(
    directory: Path, rules: Path, metrics_port: int, alertmanager_port: int, dead_port: int
) -> Path:
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "alerting": {
            "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{alertmanager_port}"]}]}]
        },
        "scrape_configs": [
            {"job_name": SERVICE_JOB, "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]},
            # a Collector that is down: nothing listens on this port
            {"job_name": "otel-collector", "static_configs": [{"targets": [f"127.0.0.1:{dead_port}"]}]},
        ],
    }
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus = require_program("prometheus")
    alertmanager = require_program("alertmanager")
    tmp = tmp_path_factory.mktemp("stack")
    processes = Processes(tmp)
    webhook = Webhook()
    service_port, metrics_port, prometheus_port, alertmanager_port, dead_port = (
        free_port() for _ in range(5)
    )
    with webhook.serving() as webhook_url:
        try:
            # the demo service, started as users start it: its CLI, with the Prometheus exporter
            processes.start(
                "demo",
                [*DEMO, "--port", str(service_port), "--prometheus-port", str(metrics_port)],
            )
            processes.start(
                "alertmanager",
                [
                    alertmanager,
                    f"--config.file={_test_alertmanager_config(tmp, webhook_url)}",
                    f"--storage.path={tmp / 'alertmanager-data'}",
                    f"--web.listen-address=127.0.0.1:{alertmanager_port}",
                    "--cluster.listen-address=",
                ],
            )
            prometheus_config = _prometheus_config(
                tmp, _test_rules(tmp), metrics_port, alertmanager_port, dead_port
            )
            processes.start(
                "prometheus",
                [
                    prometheus,
                    f"--config.file={prometheus_config}",
                    f"--storage.tsdb.path={tmp / 'prometheus-data'}",
                    f"--web.listen-address=127.0.0.1:{prometheus_port}",
                    "--enable-feature=exemplar-storage",
                ],
            )
            running = Stack(
                f"http://127.0.0.1:{prometheus_port}",
                f"http://127.0.0.1:{alertmanager_port}",
                webhook,
                processes.logs,
            )
            service = f"http://127.0.0.1:{service_port}"
            running.wait_for("the demo service", lambda: httpx.get(f"{service}/healthz").is_success or None)
            running.wait_for(
                "Alertmanager", lambda: httpx.get(f"{running.alertmanager}/-/ready").is_success or None
            )
            running.wait_for(
                "Prometheus", lambda: httpx.get(f"{running.prometheus}/-/ready").is_success or None
            )
            processes.start(
                "traffic",
                [sys.executable, "-m", "exitstack_otel", "traffic", "--target", service, *TRAFFIC_OPTIONS],
            )
            # a rate needs two scrapes of a failed run: wait until Prometheus sees failures increase
            running.wait_for(
                "failed cleanups in Prometheus",
                lambda: running.query(FAILURES_SEEN) or None,
            )
            yield running
        finally:
            processes.stop_all()


def _with_variables(promql: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        promql = promql.replace(variable, value)
    assert "$" not in promql, promql
    return promql


def _finite(result: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [series for series in result if math.isfinite(float(series["value"][1]))]


def test_every_dashboard_query_returns_data(stack: Stack) -> None:
    checked = 0
    for name, board in dashboards().items():
        for panel, target in panel_targets(board):
            if target["datasource"]["type"] != "prometheus":
                assert target["datasource"]["type"] == "tempo"  # traces: not Prometheus's to answer
                continue
            result = stack.query(_with_variables(target["expr"]))
            assert _finite(result), f"{name}: panel {panel['title']!r} query {target['refId']} has no data"
            checked += 1
    assert checked >= 15


def test_dashboard_variables_list_the_demo(stack: Stack) -> None:
    for board in dashboards().values():
        for variable in board["templating"]["list"]:
            if variable["type"] == "datasource":
                continue
            metric, label = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["definition"]).groups()  # type: ignore[union-attr]
            result = stack.query(_with_variables(metric))
            values = {series["metric"].get(label) for series in result}
            assert values - {None, ""}, f"variable {variable['name']} lists nothing"
            if variable["name"] == "service":
                assert SERVICE_JOB in values


def test_panels_show_the_failing_and_slow_callback(stack: Stack) -> None:
    board = dashboards()["request-cleanup.json"]
    targets = {(panel["title"], target["refId"]): target for panel, target in panel_targets(board)}
    errors = stack.query(_with_variables(targets["Cleanup errors per second by callback", "A"]["expr"]))
    failing = {(s["metric"]["exitstack_callback_name"], s["metric"]["error_type"]) for s in _finite(errors)}
    assert ("AuditLog.flush", "exitstack_otel.demo.audit.AuditFlushError") in failing
    p99 = stack.query(_with_variables(targets["Callback duration p50 / p95 / p99 by callback", "C"]["expr"]))
    slowest = max(_finite(p99), key=lambda series: float(series["value"][1]))
    assert slowest["metric"]["exitstack_callback_name"] == "AuditLog.flush"
    assert float(slowest["value"][1]) > 0.5  # the demo's slow flushes take 0.6 s


def test_the_exporter_gives_exactly_the_documented_names(stack: Stack) -> None:
    result = stack.query('{__name__=~"exitstack_.*", job="' + SERVICE_JOB + '"}')
    assert {series["metric"]["__name__"] for series in result} == documented_series()


def _active_alerts(stack: Stack) -> list[dict[str, Any]]:
    alerts: list[dict[str, Any]] = httpx.get(f"{stack.alertmanager}/api/v2/alerts", timeout=10).json()
    return alerts


def test_cleanup_alerts_reach_alertmanager_and_the_pager(stack: Stack) -> None:
    def firing() -> set[str] | None:
        names = {alert["labels"]["alertname"] for alert in _active_alerts(stack)}
        return names if {FAILURE_ALERT, SLOW_ALERT} <= names else None

    # (the stuck, never-run and telemetry-stopped alerts are left to promtool's unit tests: their 10 to 60
    # minute windows cannot settle within the few seconds of history this test has)
    stack.wait_for("the cleanup alerts in Alertmanager", firing)

    def paged() -> dict[str, Any] | None:
        return next(
            (a for a in stack.webhook.alerts("/team-pager") if a["labels"]["alertname"] == FAILURE_ALERT),
            None,
        )

    # the dashboard marks firing cleanup alerts on its graphs
    for board in dashboards().values():
        for annotation in board["annotations"]["list"]:
            marked = stack.query(annotation["expr"])
            assert FAILURE_ALERT in {series["metric"]["alertname"] for series in marked}

    alert = stack.wait_for("the pager notification", paged)
    assert alert["labels"]["exitstack_callback_name"] == "AuditLog.flush"
    assert alert["labels"]["job"] == SERVICE_JOB
    assert alert["labels"]["severity"] == "critical"
    assert alert["annotations"]["runbook_url"].endswith("docs/runbooks.md#exitstackcleanupcallbacksfailing")
    assert alert["annotations"]["dashboard_url"].endswith(f"var-service={SERVICE_JOB}")

    # the demo's slow callback is the failing one (AuditLog.flush): its slowness warning is held back
    # under the critical failure alert of the same callback, and never opens a ticket
    slow = next(a for a in _active_alerts(stack) if a["labels"]["alertname"] == SLOW_ALERT)
    assert slow["labels"]["exitstack_callback_name"] == "AuditLog.flush"
    assert slow["status"]["inhibitedBy"], slow
    assert not [a for a in stack.webhook.alerts("/team-tickets") if a["labels"]["alertname"] == SLOW_ALERT]


def test_watchdog_reaches_the_dead_mans_switch(stack: Stack) -> None:
    def heard() -> dict[str, Any] | None:
        return next(
            (a for a in stack.webhook.alerts("/deadmans-switch") if a["labels"]["alertname"] == "Watchdog"),
            None,
        )

    alert = stack.wait_for("the Watchdog at the dead man's switch", heard)
    assert alert["labels"]["severity"] == "none"
    assert not [a for a in stack.webhook.alerts("/team-pager") if a["labels"]["alertname"] == "Watchdog"]


def test_a_dead_collector_pages_once_and_its_target_down_warning_is_held_back(stack: Stack) -> None:
    def both_active() -> dict[str, dict[str, Any]] | None:
        alerts = {
            a["labels"]["alertname"]: a
            for a in _active_alerts(stack)
            if a["labels"].get("job") == "otel-collector"
        }
        return alerts if {COLLECTOR_DOWN, TARGET_DOWN} <= set(alerts) else None

    alerts = stack.wait_for("the Collector-down and target-down alerts", both_active)
    assert alerts[TARGET_DOWN]["status"]["state"] == "suppressed"
    assert alerts[TARGET_DOWN]["status"]["inhibitedBy"]
    stack.wait_for(
        "the Collector-down page",
        lambda: next(
            (a for a in stack.webhook.alerts("/team-pager") if a["labels"]["alertname"] == COLLECTOR_DOWN),
            None,
        ),
    )
    assert not [a for a in stack.webhook.alerts("/team-tickets") if a["labels"]["alertname"] == TARGET_DOWN]
