"""Grafana building blocks: targets, panels with explicit thresholds, variables, layout."""

from __future__ import annotations

from typing import Any

from . import config as c

# the Data source variable picks the Prometheus every panel reads; Tempo is the one provisioned
PROM = {"type": "prometheus", "uid": "${datasource}"}
TEMPO = {"type": "tempo", "uid": c.TEMPO_UID}


def target(expr: str, legend: str = "", ref: str = "A", **extra: Any) -> dict[str, Any]:
    return {"datasource": PROM, "expr": expr, "legendFormat": legend, "refId": ref, **extra}


def thresholds(*steps: tuple[str, float]) -> dict[str, Any]:
    """Green below the first step; every step is set here, so Grafana's default (red at 80) never applies."""
    return {
        "mode": "absolute",
        "steps": [
            {"color": "green", "value": None},
            *({"color": color, "value": value} for color, value in steps),
        ],
    }


def panel(
    title: str,
    answers: str,
    kind: str,
    targets: list[dict[str, Any]],
    *,
    unit: str = "short",
    links: list[dict[str, str]] | None = None,
    options: dict[str, Any] | None = None,
    transformations: list[dict[str, Any]] | None = None,
    overrides: list[dict[str, Any]] | None = None,
    datasource: dict[str, str] = PROM,
    alert_threshold: float | None = None,
    steps: tuple[tuple[str, float], ...] = (),
    decimals: int | None = None,
    no_value: str | None = None,
) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": unit, "links": links or [], "min": 0}
    if alert_threshold is not None:
        # red at the alert's threshold: the panel shows how close a callback is to paging
        steps = (("red", alert_threshold),)
    if kind in {"stat", "timeseries", "table"}:
        defaults["thresholds"] = thresholds(*steps)
    if alert_threshold is not None and kind == "timeseries":
        defaults["custom"] = {"thresholdsStyle": {"mode": "line"}}
    if decimals is not None:
        defaults["decimals"] = decimals
    if no_value is not None:
        defaults["noValue"] = no_value
    result: dict[str, Any] = {
        "type": kind,
        "title": title,
        "description": answers,
        "datasource": datasource,
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "options": options or {},
    }
    if transformations:
        result["transformations"] = transformations
    return result


def column(name: str, **properties: Any) -> dict[str, Any]:
    """A table column's own unit, decimals or display name (Grafana's field override by name)."""
    return {
        "matcher": {"id": "byName", "options": name},
        "properties": [{"id": key, "value": value} for key, value in properties.items()],
    }


def variable(name: str, label: str, query: str) -> dict[str, Any]:
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


def datasource_variable() -> dict[str, Any]:
    # as Grafana's dashboard linter asks: the same dashboard works against another Prometheus
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {"selected": True, "text": "Prometheus", "value": c.PROMETHEUS_UID},
        "refresh": 1,
        "hide": 0,
    }


def layout(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stats across the top, then two wide panels per row."""
    stats = [p for p in panels if p["type"] == "stat"]
    width = 24 // len(stats)
    x = y = 0
    wide = 0
    for index, p in enumerate(panels):
        p["id"] = index + 1
        if p["type"] == "stat":
            last = p is stats[-1]
            p["gridPos"] = {"h": 4, "w": 24 - x if last else width, "x": x, "y": 0}
            x += width
            y = 4
            continue
        column_index = wide % 2
        p["gridPos"] = {"h": 8, "w": 12, "x": 12 * column_index, "y": y}
        wide += 1
        if column_index == 1:
            y += 8
    return panels
