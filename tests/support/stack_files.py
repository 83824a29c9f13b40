"""Paths and loaders shared by the tests of the compose stack, dashboards and alert rules."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
RULES_FILE = ROOT / "prometheus" / "rules" / "exitstack-cleanup.rules.yml"
RULES_TEST_FILE = ROOT / "prometheus" / "tests" / "exitstack-cleanup.test.yml"
PROMETHEUS_CONFIG = ROOT / "prometheus" / "prometheus.yml"
ALERTMANAGER_CONFIG = ROOT / "alertmanager" / "alertmanager.yml"
COLLECTOR_CONFIG = ROOT / "otel-collector" / "config.yaml"
TEMPO_CONFIG = ROOT / "tempo" / "tempo.yaml"
DASHBOARD_DIR = ROOT / "grafana" / "dashboards"
DATASOURCES = ROOT / "grafana" / "provisioning" / "datasources" / "datasources.yaml"
TELEMETRY_DOC = ROOT / "docs" / "telemetry.md"
RUNBOOKS = ROOT / "docs" / "runbooks.md"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARD_DIR.glob("*.json"))}


def panel_targets(board: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(panel, target) for every query of every panel, rows included."""
    found: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for panel in board["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            found.extend((inner, target) for target in inner.get("targets", []))
    return found


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(RULES_FILE)["groups"] for rule in group["rules"] if "alert" in rule]


def prometheus_section() -> str:
    """The "In Prometheus" section of docs/telemetry.md."""
    text = TELEMETRY_DOC.read_text()
    start = text.index("## In Prometheus")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def _table(header: str) -> list[list[str]]:
    """Rows of the table in the "In Prometheus" section whose header row is ``header``."""
    lines = prometheus_section().splitlines()
    start = lines.index(header) + 2  # skip the header and its |---| line
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def documented_series() -> set[str]:
    """Every Prometheus series name the contract lists, suffixes spelled out."""
    names: set[str] = set()
    for _, series in _table("| contract name | Prometheus series |"):
        spelled = re.findall(r"`([a-z_]+)`", series)
        base = spelled[0]
        names.add(base)
        stem = base.rsplit("_", 1)[0]
        names.update(stem + suffix for suffix in spelled[1:])
    return names


def documented_labels() -> set[str]:
    return {label.strip("`") for _, label in _table("| contract attribute | Prometheus label |")}


def series_names(promql: str) -> set[str]:
    """Names of our metrics that a PromQL expression reads (labels are not series)."""
    return set(re.findall(r"\bexitstack_[a-z_]+\b", promql)) - documented_labels()
