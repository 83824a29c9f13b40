"""The Grafana dashboards: built from monitoring/, on the contract's names, with the panels asked for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from monitoring import build, config

from .stack_files import (
    DASHBOARD_DIR,
    DATASOURCES,
    dashboards,
    documented_labels,
    documented_series,
    load_yaml,
    panel_targets,
    series_names,
)


def _board() -> dict[str, Any]:
    return dashboards()["request-cleanup.json"]


def test_committed_dashboards_are_what_monitoring_builds() -> None:
    stale_dashboards = [path for path in build.stale() if path.parent == DASHBOARD_DIR]
    assert stale_dashboards == [], "run: python -m monitoring.build"
    assert set(dashboards()) == {path.name for path in build.rendered() if path.parent == DASHBOARD_DIR}


def test_a_changed_committed_dashboard_is_noticed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    board = _board()
    board["panels"][0]["title"] = "edited by hand"
    copy = tmp_path / "request-cleanup.json"
    copy.write_text(json.dumps(board, indent=2) + "\n")
    original = build.rendered

    def rendered_into_tmp() -> dict[Path, str]:
        return {
            tmp_path / path.name if path.parent == DASHBOARD_DIR else path: text
            for path, text in original().items()
        }

    monkeypatch.setattr(build, "rendered", rendered_into_tmp)
    assert copy in build.stale()


def test_dashboard_uid_is_stable() -> None:
    assert _board()["uid"] == config.DASHBOARD_UID == "exitstack-request-cleanup"
    assert _board()["title"] == "Request cleanup"


def test_variables_for_service_stack_route_and_callback() -> None:
    variables = {v["name"]: v for v in _board()["templating"]["list"]}
    assert set(variables) == {"service", "stack", "route", "callback"}
    assert "job)" in variables["service"]["definition"]
    assert "exitstack_stack_name)" in variables["stack"]["definition"]
    assert "http_route)" in variables["route"]["definition"]
    assert "exitstack_callback_name)" in variables["callback"]["definition"]
    for variable in variables.values():
        assert variable["includeAll"]
        assert variable["allValue"] == ".*"


def test_the_panels_the_issue_asks_for() -> None:
    panels = {panel["title"]: panel for panel in _board()["panels"]}
    wanted = {
        "Cleanup errors per second by callback": "timeseries",
        "Cleanup error ratio by callback": "timeseries",
        "Callback duration p50 / p95 / p99 by callback": "timeseries",
        "Callback duration heatmap": "heatmap",
        "Unwind duration by route": "timeseries",
        "Callbacks per request by route": "timeseries",
        "Pushed but never executed by callback": "timeseries",
        "Unwinds in progress by stack": "timeseries",
        "Slowest and most failing callbacks": "table",
        "Failed and slow cleanups (traces)": "table",
    }
    for title, kind in wanted.items():
        assert panels[title]["type"] == kind, title
    quantiles = [t["expr"] for t in panels["Callback duration p50 / p95 / p99 by callback"]["targets"]]
    assert [q.split(",")[0] for q in quantiles] == [
        f"histogram_quantile({q}" for q in ("0.5", "0.95", "0.99")
    ]
    assert all("exitstack_callback_name" in q for q in quantiles)
    assert all("by (http_route" in t["expr"] for t in panels["Unwind duration by route"]["targets"])


def test_every_panel_says_what_it_answers_and_has_a_unique_place() -> None:
    panels = _board()["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    places = {(p["gridPos"]["x"], p["gridPos"]["y"]) for p in panels}
    assert len(places) == len(panels)
    for panel in panels:
        assert panel["description"], panel["title"]
        assert panel["targets"], panel["title"]


def test_exemplars_and_links_to_tempo() -> None:
    panels = {panel["title"]: panel for panel in _board()["panels"]}
    p99 = panels["Callback duration p50 / p95 / p99 by callback"]["targets"][2]
    assert p99.get("exemplar") is True
    links = panels["Slowest and most failing callbacks"]["fieldConfig"]["defaults"]["links"]
    assert links
    assert '"uid":"tempo"' in links[0]["url"]
    traces = panels["Failed and slow cleanups (traces)"]
    assert traces["datasource"]["type"] == "tempo"
    assert "span.exitstack.callback.name" in traces["targets"][0]["query"]


def test_datasources_the_dashboards_use_are_provisioned_with_exemplar_links() -> None:
    provisioned = {source["uid"]: source for source in load_yaml(DATASOURCES)["datasources"]}
    used = {target["datasource"]["uid"] for _, target in panel_targets(_board())}
    used |= {panel["datasource"]["uid"] for panel in _board()["panels"]}
    assert used <= set(provisioned)
    destinations = provisioned["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert {"name": "trace_id", "datasourceUid": "tempo"} in destinations
    assert provisioned["tempo"]["jsonData"]["tracesToMetrics"]["datasourceUid"] == "prometheus"
    assert provisioned["alertmanager"]["type"] == "alertmanager"


def test_dashboards_read_only_documented_series_and_labels() -> None:
    for name, board in dashboards().items():
        queries = [t["expr"] for _, t in panel_targets(board) if "expr" in t]
        queries += [v["definition"] for v in board["templating"]["list"]]
        used = set().union(*(series_names(q) for q in queries))
        missing = used - documented_series()
        assert not missing, f"{name} reads {missing}, missing from docs/telemetry.md"
        for label in ("exitstack_stack_name", "exitstack_callback_name", "http_route", "error_type"):
            assert label in documented_labels()
            assert any(label in q for q in queries)


def test_alert_thresholds_are_drawn_from_the_same_config() -> None:
    panels = {panel["title"]: panel for panel in _board()["panels"]}
    for title, threshold in (
        ("Cleanup error ratio by callback", config.ERROR_RATIO_THRESHOLD),
        ("Callback duration p50 / p95 / p99 by callback", config.SLOW_P99_SECONDS),
    ):
        steps = panels[title]["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert steps[-1]["value"] == threshold
