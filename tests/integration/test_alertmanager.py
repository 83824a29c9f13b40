"""Alertmanager's routing, checked by amtool: each alert reaches the receiver its severity calls for, the
Watchdog reaches the dead man's switch, and warnings are held back only under their critical alert."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import require_program
from tests.support.stack_files import ALERTMANAGER_CONFIG, alert_rules, load_yaml

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


def test_the_dead_mans_switch_hears_the_watchdog_every_minute() -> None:
    route = next(
        r for r in load_yaml(ALERTMANAGER_CONFIG)["route"]["routes"] if r["receiver"] == "deadmans-switch"
    )
    assert route["repeat_interval"] == "1m"
    receiver = next(r for r in load_yaml(ALERTMANAGER_CONFIG)["receivers"] if r["name"] == "deadmans-switch")
    assert receiver["webhook_configs"][0]["url"].startswith("http")


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
