"""The per-route panels state the truth for a FastAPI app and its three stacks, in a real Prometheus.

A FastAPI service whose cleanup is known (tests/support/panel_service.py) is scraped by Debian's Prometheus
while traffic flows; the dashboard's own queries for "Callbacks per unwind by route and stack" and
"Unwind duration by route and stack" must give what the app does: FastAPI's empty stacks nowhere,
two dependencies as 2, a 0.3 s teardown as 0.3 s.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator

import httpx
import pytest
import yaml

from tests.conftest import require_program
from tests.support.monitoring_stack import GRAFANA_VARIABLES, Processes, Stack, Webhook
from tests.support.panel_service import SLOW_TEARDOWN_SECONDS
from tests.support.processes import free_port
from tests.support.stack_files import dashboards, panel_targets

pytestmark = pytest.mark.integration

JOB = "panel-service"


def _panel_query(title: str, ref_id: str) -> str:
    board = dashboards()["request-cleanup.json"]
    [expr] = [
        target["expr"]
        for panel, target in panel_targets(board)
        if panel["title"] == title and target["refId"] == ref_id
    ]
    for variable, value in {**GRAFANA_VARIABLES, "$service": JOB}.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr
    return str(expr)


def _by_route_and_stack(stack: Stack, promql: str) -> dict[tuple[str, str], float]:
    return {
        (series["metric"]["http_route"], series["metric"]["exitstack_stack_name"]): float(series["value"][1])
        for series in stack.query(promql)
    }


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    program = require_program("prometheus")
    tmp = tmp_path_factory.mktemp("panels")
    processes = Processes(tmp)
    port, metrics_port, prometheus_port = free_port(), free_port(), free_port()
    config = {
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    stop = threading.Event()
    traffic_thread: threading.Thread | None = None
    try:
        processes.start(
            "service", [sys.executable, "-m", "tests.support.panel_service", str(port), str(metrics_port)]
        )
        processes.start(
            "prometheus",
            [
                program,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
            ],
        )
        stack = Stack(f"http://127.0.0.1:{prometheus_port}", "", Webhook(), processes.logs)
        service = f"http://127.0.0.1:{port}"
        stack.wait_for("the service", lambda: httpx.get(f"{service}/two-deps").is_success or None)

        def traffic() -> None:
            # both routes, all through the test: the panels take rates over the last 15 s
            with httpx.Client(base_url=service, timeout=10) as client:
                while not stop.is_set():
                    client.get("/two-deps")
                    client.get("/slow-teardown")

        traffic_thread = threading.Thread(target=traffic, daemon=True)
        traffic_thread.start()

        def both_routes_shown() -> bool | None:
            callbacks = _by_route_and_stack(
                stack, _panel_query("Callbacks per unwind by route and stack", "A")
            )
            durations = _by_route_and_stack(stack, _panel_query("Unwind duration by route and stack", "A"))
            return (len(callbacks) >= 3 and ("/slow-teardown", "fastapi_inner_astack") in durations) or None

        stack.wait_for("both routes in the panels", both_routes_shown)
        yield stack
    finally:
        stop.set()
        # the service must outlive the requests in flight (one may be in its 0.3 s teardown), or the
        # loop's next request meets a closed port and fails the last test's teardown
        if traffic_thread is not None:
            traffic_thread.join(timeout=15)
        processes.stop_all()


def test_callbacks_per_unwind_counts_each_stack_that_did_something(prometheus: Stack) -> None:
    found = _by_route_and_stack(prometheus, _panel_query("Callbacks per unwind by route and stack", "A"))
    assert found == {
        ("/two-deps", "fastapi_inner_astack"): 2.0,
        ("/two-deps", "fastapi_function_astack"): 1.0,
        ("/slow-teardown", "fastapi_inner_astack"): 1.0,
    }  # fastapi_middleware_astack closed nothing (no upload): it appears nowhere


def test_unwind_duration_p50_is_the_teardown_time(prometheus: Stack) -> None:
    found = _by_route_and_stack(prometheus, _panel_query("Unwind duration by route and stack", "A"))
    p50 = found[("/slow-teardown", "fastapi_inner_astack")]
    # estimated inside the bucket that holds 0.3 s (0.25 to 0.5), never the empty stacks' microseconds
    assert 0.25 <= SLOW_TEARDOWN_SECONDS <= 0.5
    assert 0.25 <= p50 <= 0.5, found
    assert found[("/two-deps", "fastapi_inner_astack")] < 0.01
    assert not any(stack == "fastapi_middleware_astack" for _, stack in found)
