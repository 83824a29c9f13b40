"""The alert rules: valid for Prometheus, unit-tested with promtool, documented, built from monitoring/."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from monitoring import build, config
from tests.conftest import require_program
from tests.support.stack_files import (
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
    "ExitstackTelemetryStopped",
    "ExitstackCollectorDown",
    "ExitstackCollectorRefusing",
    "ExitstackCollectorExportFailing",
    "MonitoringTargetDown",
    "Watchdog",
}
# always firing by design: its silence is what the dead man's switch receiver detects
ALWAYS_FIRING = {"Watchdog"}


def _run_unit_tests(rules_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """promtool's unit tests of prometheus/tests/ against other rules, laid out as the test file expects."""
    promtool = require_program("promtool")
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "rules" / RULES_FILE.name).write_text(rules_text)
    (tmp_path / "tests" / RULES_TEST_FILE.name).write_text(RULES_TEST_FILE.read_text())
    return subprocess.run(
        [promtool, "test", "rules", RULES_TEST_FILE.name],
        capture_output=True,
        text=True,
        cwd=tmp_path / "tests",
    )


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


def test_promtool_unit_tests_fail_when_an_alert_never_fires(tmp_path: Path) -> None:
    # the unit tests must notice a rule that never fires: replace every expression with an empty one
    rules = yaml.safe_load(RULES_FILE.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["expr"] = "vector(1) > 2"
    result = _run_unit_tests(yaml.safe_dump(rules), tmp_path)
    assert result.returncode != 0
    for alert in EXPECTED_ALERTS:
        assert f"alertname: {alert}" in result.stdout + result.stderr, alert


def test_every_alert_is_unit_tested_firing_and_silent() -> None:
    cases = [case for test in load_yaml(RULES_TEST_FILE)["tests"] for case in test["alert_rule_test"]]
    fires = {case["alertname"] for case in cases if case.get("exp_alerts")}
    silent = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    assert fires == EXPECTED_ALERTS
    assert silent == EXPECTED_ALERTS - ALWAYS_FIRING


def test_every_alert_has_severity_summary_description_and_a_runbook_section() -> None:
    runbook_anchors = {
        heading.lower() for heading in re.findall(r"^## (\w+)$", RUNBOOKS.read_text(), flags=re.MULTILINE)
    }
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} == EXPECTED_ALERTS
    for rule in rules:
        if rule["alert"] in ALWAYS_FIRING:
            assert rule["labels"]["severity"] == "none"  # routed to the dead man's switch, never a page
        else:
            assert rule["labels"]["severity"] in {"warning", "critical"}
            assert rule["for"]
        annotations = rule["annotations"]
        assert annotations["summary"]
        assert annotations["description"]
        anchor = annotations["runbook_url"].rpartition("#")[2]
        assert annotations["runbook_url"].split("#")[0].endswith("docs/runbooks.md")
        assert anchor == rule["alert"].lower()
        assert anchor in runbook_anchors, f"docs/runbooks.md has no section for {rule['alert']}"
        assert annotations["dashboard_url"].startswith(f"{config.GRAFANA_URL}/d/{config.DASHBOARD_UID}?")


def _runbook_sections() -> dict[str, str]:
    parts = re.split(r"^## (\w+)$", RUNBOOKS.read_text(), flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_every_runbook_says_what_the_alert_means_its_impact_and_what_to_do() -> None:
    sections = _runbook_sections()
    assert set(sections) == EXPECTED_ALERTS
    for alert, text in sections.items():
        for part in ("**What it means.**", "**Impact.**", "**What to do.**"):
            assert part in text, f"docs/runbooks.md, {alert}: no {part}"


def test_rules_read_only_documented_series() -> None:
    # the pipeline's alerts read the Collector's and Prometheus' own series (up, otelcol_*), not ours
    pipeline = {"ExitstackCollectorDown", "ExitstackCollectorRefusing", "ExitstackCollectorExportFailing"}
    for rule in alert_rules():
        used = series_names(rule["expr"])
        if rule["alert"] not in pipeline | ALWAYS_FIRING | {"MonitoringTargetDown"}:
            assert used, rule["alert"]
        assert used <= documented_series(), f"{rule['alert']} reads undocumented {used - documented_series()}"


def test_committed_rules_are_what_monitoring_builds() -> None:
    assert RULES_FILE not in build.stale(), "run: python -m monitoring.build"
