"""The alert rules: valid for Prometheus, unit-tested with promtool, documented, built from monitoring/."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from monitoring import build

from .conftest import require_program
from .stack_files import (
    RULES_FILE,
    RULES_TEST_FILE,
    RUNBOOKS,
    alert_rules,
    documented_series,
    load_yaml,
    series_names,
)

EXPECTED_ALERTS = {
    "ExitstackCleanupCallbacksFailing",
    "ExitstackCleanupSlow",
    "ExitstackUnwindsStuck",
    "ExitstackCallbacksNeverRun",
}


def test_promtool_accepts_the_rules() -> None:
    promtool = require_program("promtool")
    result = subprocess.run([promtool, "check", "rules", str(RULES_FILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    promtool = require_program("promtool")
    result = subprocess.run(
        [promtool, "test", "rules", str(RULES_TEST_FILE)],
        capture_output=True,
        text=True,
        cwd=RULES_TEST_FILE.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_fail_when_an_alert_is_broken(tmp_path: Path) -> None:
    # the unit tests must notice a rule that never fires: raise every threshold out of reach
    promtool = require_program("promtool")
    rules_dir = tmp_path / "rules"
    tests_dir = tmp_path / "tests"
    rules_dir.mkdir()
    tests_dir.mkdir()
    broken = re.sub(r"> (0\.\d+|0)$", "> 1e9", RULES_FILE.read_text(), flags=re.MULTILINE)
    assert broken != RULES_FILE.read_text()
    (rules_dir / RULES_FILE.name).write_text(broken)
    (tests_dir / RULES_TEST_FILE.name).write_text(RULES_TEST_FILE.read_text())
    result = subprocess.run(
        [promtool, "test", "rules", RULES_TEST_FILE.name], capture_output=True, text=True, cwd=tests_dir
    )
    assert result.returncode != 0
    for alert in EXPECTED_ALERTS:
        assert f"alertname: {alert}" in result.stdout + result.stderr


def test_every_alert_is_unit_tested_firing_and_silent() -> None:
    cases = [case for test in load_yaml(RULES_TEST_FILE)["tests"] for case in test["alert_rule_test"]]
    fires = {case["alertname"] for case in cases if case.get("exp_alerts")}
    silent = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    assert fires == EXPECTED_ALERTS
    assert silent == EXPECTED_ALERTS


def test_every_alert_has_severity_summary_description_and_a_runbook_section() -> None:
    runbook_anchors = {
        heading.lower() for heading in re.findall(r"^## (\w+)$", RUNBOOKS.read_text(), flags=re.MULTILINE)
    }
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} == EXPECTED_ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["for"]
        annotations = rule["annotations"]
        assert annotations["summary"]
        assert annotations["description"]
        anchor = annotations["runbook_url"].rpartition("#")[2]
        assert annotations["runbook_url"].split("#")[0].endswith("docs/runbooks.md")
        assert anchor == rule["alert"].lower()
        assert anchor in runbook_anchors, f"docs/runbooks.md has no section for {rule['alert']}"


def test_rules_read_only_documented_series() -> None:
    for rule in alert_rules():
        used = series_names(rule["expr"])
        assert used, rule["alert"]
        assert used <= documented_series(), f"{rule['alert']} reads undocumented {used - documented_series()}"


def test_committed_rules_are_what_monitoring_builds() -> None:
    assert RULES_FILE not in build.stale(), "run: python -m monitoring.build"
