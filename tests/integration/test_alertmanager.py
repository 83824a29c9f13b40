"""Alertmanager's routing, checked by amtool: each alert reaches the receiver its severity calls for, the
Watchdog reaches the dead man's switch (every minute, checked on the real Alertmanager), and warnings are
held back only under their critical alert."""

from __future__ import annotations

import itertools
import math
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import require_program
from tests.support.monitoring_stack import Processes, Webhook, wait_for_probe
from tests.support.processes import free_port
from tests.support.stack_files import ALERTMANAGER_CONFIG, alert_rules, load_yaml

# the cadence test runs Alertmanager's timing 10 times faster than shipped
SCALE = 10

RECEIVER_OF_SEVERITY = {"critical": "team-pager", "warning": "team-tickets", "none": "deadmans-switch"}


def _route(labels: dict[str, str]) -> str:
    amtool = require_program("amtool")
    argv = [amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}"]
    result = subprocess.run(
        [*argv, *(f"{key}={value}" for key, value in labels.items())], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


def test_amtool_accepts_the_config() -> None:
    amtool = require_program("amtool")
    result = subprocess.run(
        [amtool, "check-config", str(ALERTMANAGER_CONFIG)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_every_alert_is_routed_by_its_severity(rule: dict[str, str | dict[str, str]]) -> None:
    labels = rule["labels"]
    assert isinstance(labels, dict)
    severity = labels["severity"]
    assert _route({"alertname": str(rule["alert"]), **labels}) == RECEIVER_OF_SEVERITY[severity]


def test_an_alert_without_severity_still_reaches_someone() -> None:
    assert _route({"alertname": "SomethingNew"}) == "team-tickets"


def _watchdog_route() -> dict[str, Any]:
    config = load_yaml(ALERTMANAGER_CONFIG)
    route: dict[str, Any] = next(r for r in config["route"]["routes"] if r["receiver"] == "deadmans-switch")
    return route


def _seconds(duration: str) -> float:
    return sum(
        float(amount) * {"h": 3600, "m": 60, "s": 1}[unit]
        for amount, unit in re.findall(r"(\d+)([hms])", duration)
    )


def test_the_dead_mans_switch_hears_the_watchdog_every_minute(tmp_path: Path) -> None:
    # the real Alertmanager with the shipped Watchdog route, every interval 10 times shorter: the Watchdog
    # must arrive every 6 s (the README's "every minute"); with group_interval = repeat_interval it came
    # every second flush (12 s here, 120 s shipped)
    alertmanager = require_program("alertmanager")
    route = _watchdog_route()
    scaled = {key: f"{_seconds(route[key]) / SCALE:g}s" for key in ("group_interval", "repeat_interval")}
    expected = 60 / SCALE
    webhook = Webhook()
    port = free_port()
    processes = Processes(tmp_path)
    with webhook.serving() as url:
        config = {
            "route": {"receiver": "deadmans-switch", "routes": [{**route, **scaled, "group_wait": "0s"}]},
            "receivers": [{"name": "deadmans-switch", "webhook_configs": [{"url": f"{url}/ping"}]}],
        }
        (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(config))
        try:
            processes.start(
                "alertmanager",
                [
                    alertmanager,
                    f"--config.file={tmp_path / 'alertmanager.yml'}",
                    f"--storage.path={tmp_path / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--cluster.listen-address=",
                ],
            )
            base = f"http://127.0.0.1:{port}"
            wait_for_probe(
                "Alertmanager", lambda: httpx.get(f"{base}/-/ready").is_success or None, processes.logs
            )

            def fourth_arrival() -> bool | None:
                # as Prometheus does: the firing alert is sent again at every evaluation (here every second)
                watchdog = {"labels": {"alertname": "Watchdog", "severity": "none"}}
                httpx.post(f"{base}/api/v2/alerts", json=[watchdog], timeout=5).raise_for_status()
                time.sleep(0.5)
                return len(webhook.arrived) >= 4 or None

            wait_for_probe("four Watchdog notifications", fourth_arrival, processes.logs)
        finally:
            processes.stop_all()
    gaps = [later - earlier for earlier, later in itertools.pairwise(webhook.arrived[:4])]
    # a flush can be late on a loaded machine, never early
    assert all(expected - 0.5 < gap < expected + 2 for gap in gaps), (gaps, scaled)
    assert {to for to, _ in webhook.received} == {"/ping"}


def test_the_watchdog_route_repeats_at_a_flush_a_minute_apart() -> None:
    # Alertmanager repeats at the first flush at least repeat_interval after the last send
    route = _watchdog_route()
    flush, repeat = _seconds(route["group_interval"]), _seconds(route["repeat_interval"])
    assert flush < repeat  # Alertmanager warns (and repeats at each flush) when repeat < flush
    assert math.ceil(repeat / flush) * flush == 60


def test_only_warnings_are_inhibited_and_only_by_a_critical_alert() -> None:
    severity = {str(rule["alert"]): rule["labels"]["severity"] for rule in alert_rules()}
    rules = load_yaml(ALERTMANAGER_CONFIG)["inhibit_rules"]
    assert rules
    for rule in rules:
        assert len(rule["source_matchers"]) == len(rule["target_matchers"]) == 1
        source = rule["source_matchers"][0].removeprefix("alertname = ")
        target = rule["target_matchers"][0].removeprefix("alertname = ")
        assert severity[source] == "critical", source
        assert severity[target] == "warning", target
