"""The Grafana dashboards: built from monitoring/, on the contract's names, with the panels asked for."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from monitoring import build, config
from tests.support.stack_files import (
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


def test_variables_for_data_source_service_instance_stack_route_and_callback() -> None:
    variables = {v["name"]: v for v in _board()["templating"]["list"]}
    assert set(variables) == {"datasource", "service", "instance", "stack", "route", "callback"}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["datasource"]["current"]["value"] == config.PROMETHEUS_UID
    assert "job)" in variables["service"]["definition"]
    assert "instance)" in variables["instance"]["definition"]
    assert "exitstack_stack_name)" in variables["stack"]["definition"]
    assert "http_route)" in variables["route"]["definition"]
    assert "exitstack_callback_name)" in variables["callback"]["definition"]
    for name, variable in variables.items():
        if name != "datasource":
            assert variable["includeAll"]
            assert variable["allValue"] == ".*"


def _panels() -> dict[str, dict[str, Any]]:
    return {panel["title"]: panel for panel in _board()["panels"]}


def _exprs(panel: dict[str, Any]) -> list[str]:
    return [target["expr"] for target in panel["targets"] if "expr" in target]


def test_the_panels_the_issue_asks_for() -> None:
    panels = _panels()
    wanted = {
        "Cleanup errors per second by callback": "timeseries",
        "Cleanup error ratio by callback": "timeseries",
        "Callback duration p50 / p95 / p99 by callback": "timeseries",
        "Callback duration heatmap": "heatmap",
        "Unwind duration by route and stack": "timeseries",
        "Callbacks per unwind by route and stack": "timeseries",
        "Pushed but never executed by callback": "timeseries",
        "Unwinds in progress by instance": "timeseries",
        "Slowest and most failing callbacks": "table",
        "Failed and slow cleanups (traces)": "table",
        "Telemetry arriving": "stat",
    }
    for title, kind in wanted.items():
        assert panels[title]["type"] == kind, title
    quantiles = _exprs(panels["Callback duration p50 / p95 / p99 by callback"])
    assert [q.split(",")[0] for q in quantiles] == [
        f"histogram_quantile({q}" for q in ("0.5", "0.95", "0.99")
    ]
    assert all("exitstack_callback_name" in q for q in quantiles)


def test_per_route_panels_are_per_stack_and_name_no_stack() -> None:
    # a FastAPI request unwinds up to three stacks: an average over them is no stack's truth
    panels = _panels()
    for title in ("Unwind duration by route and stack", "Callbacks per unwind by route and stack"):
        for expr in _exprs(panels[title]):
            assert "by (job, http_route, exitstack_stack_name" in expr, title
        for target in panels[title]["targets"]:
            assert "{{exitstack_stack_name}}" in target["legendFormat"], title
    # stack names come from the Stack variable, never from a query (the middleware's default name changes)
    for _, target in panel_targets(_board()):
        text = target.get("expr", target.get("query", ""))
        assert "fastapi_" not in text, text
        assert "exitstack_middleware" not in text, text


def test_the_stuck_alert_is_per_instance_and_so_is_its_panel() -> None:
    panel = _panels()["Unwinds in progress by instance"]
    assert all("by (job, instance, exitstack_stack_name)" in expr for expr in _exprs(panel))
    assert all('instance=~"$instance"' in expr for expr in _exprs(panel))


def test_every_panel_says_what_it_answers_and_has_a_unique_place() -> None:
    panels = _board()["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    places = {(p["gridPos"]["x"], p["gridPos"]["y"]) for p in panels}
    assert len(places) == len(panels)
    for panel in panels:
        assert panel["description"], panel["title"]
        assert panel["targets"], panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]


def test_stat_panels_turn_red_at_the_alert_thresholds_not_grafanas_default() -> None:
    panels = _panels()
    for panel in panels.values():
        if panel["type"] in {"stat", "timeseries", "table"}:
            steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
            assert steps[0] == {"color": "green", "value": None}, panel["title"]
            assert all(step["value"] != 80 for step in steps), panel["title"]
    red = {
        "Cleanup error ratio": config.ERROR_RATIO_THRESHOLD,
        "Pushed, never run (time range)": config.NEVER_RUN_MIN_LEAKED,
        "Telemetry arriving": 180,  # LIVENESS_WINDOW, 3m
        "Cleanup error ratio by callback": config.ERROR_RATIO_THRESHOLD,
        "Callback duration p50 / p95 / p99 by callback": config.SLOW_P99_SECONDS,
        "Unwinds in progress by instance": config.STUCK_UNWINDS_THRESHOLD,
    }
    for title, threshold in red.items():
        steps = panels[title]["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert steps[-1] == {"color": "red", "value": threshold}, title


def test_table_lists_the_top_n_with_a_unit_per_column() -> None:
    table = _panels()["Slowest and most failing callbacks"]
    for expr in _exprs(table):
        assert f"topk({config.TABLE_TOP_N}," in expr
    units = {
        override["matcher"]["options"]: {p["id"]: p["value"] for p in override["properties"]}
        for override in table["fieldConfig"]["overrides"]
    }
    assert units["p99"]["unit"] == "s"
    assert units["error ratio"]["unit"] == "percentunit"
    assert units["failed runs"]["decimals"] == 0
    renamed = next(t for t in table["transformations"] if t["id"] == "organize")["options"]["renameByName"]
    assert set(units) <= set(renamed.values())


def test_differences_of_counts_cannot_go_negative() -> None:
    panels = _panels()
    for title in ("Pushed, never run (time range)", "Pushed but never executed by callback"):
        assert all(expr.count("clamp_min(") == 1 for expr in _exprs(panels[title])), title
    hung = _exprs(panels["Unwinds in progress by instance"])[1]
    assert hung.startswith("clamp_min(")


def test_every_rate_sees_a_new_series_first_point() -> None:
    # rate() and increase() skip a series' first point; each use comes with the young-series term
    # (promql.rate, promql.count_over); the table's p99 is a quantile over the range, not a count
    for _, target in panel_targets(_board()):
        expr = target.get("expr", "")
        if target["refId"] == "p99":
            expr = expr.split("\nand on")[1]
        uses = len(re.findall(r"\b(?:rate|increase)\(", expr))
        assert expr.count(" unless ") >= uses, expr


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
    default = next(v for v in _board()["templating"]["list"] if v["name"] == "datasource")["current"]["value"]
    used = {target["datasource"]["uid"] for _, target in panel_targets(_board())}
    used |= {panel["datasource"]["uid"] for panel in _board()["panels"]}
    used = {default if uid == "${datasource}" else uid for uid in used}
    assert used <= set(provisioned)
    prometheus = provisioned["prometheus"]["jsonData"]
    assert {"name": "trace_id", "datasourceUid": "tempo"} in prometheus["exemplarTraceIdDestinations"]
    assert prometheus["timeInterval"] == config.SAMPLE_INTERVAL_FLOOR
    traces_to_metrics = provisioned["tempo"]["jsonData"]["tracesToMetrics"]
    assert traces_to_metrics["datasourceUid"] == "prometheus"
    # service_name survives a service.namespace; job becomes namespace/name
    assert {"key": "service.name", "value": "service_name"} in traces_to_metrics["tags"]
    assert provisioned["alertmanager"]["type"] == "alertmanager"


def test_dashboards_read_only_documented_series_and_labels() -> None:
    for name, board in dashboards().items():
        queries = [t["expr"] for _, t in panel_targets(board) if "expr" in t]
        queries += [v["definition"] for v in board["templating"]["list"] if "definition" in v]
        used = set().union(*(series_names(q) for q in queries))
        missing = used - documented_series()
        assert not missing, f"{name} reads {missing}, missing from docs/telemetry.md"
        for label in ("exitstack_stack_name", "exitstack_callback_name", "http_route", "error_type"):
            assert label in documented_labels()
            assert any(label in q for q in queries)


def test_under_all_every_series_legend_names_its_service() -> None:
    for panel in _board()["panels"]:
        if panel["type"] != "timeseries":
            continue
        for target in panel["targets"]:
            assert "{{job}}" in target["legendFormat"], (panel["title"], target["legendFormat"])
            assert "sum by (job" in target["expr"] or "by (job" in target["expr"], panel["title"]
