"""Zero code: ``opentelemetry-instrument uvicorn`` exports our spans and metrics over OTLP/HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from exitstack_otel import semconv
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.polling import wait_until
from tests.support.processes import free_port, stop, wait_until_serving

ROOT = Path(__file__).resolve().parents[2]
# seconds; generous bounds for a loaded 2-core machine, never measurements
STARTUP_DEADLINE = 60.0
EXPORT_DEADLINE = 30.0

pytestmark = pytest.mark.integration


def wait_for_exports(receiver: OtlpReceiver) -> None:
    # the span processor exports every 200 ms and the metric reader every 500 ms; wait for the
    # last request's span and metric point instead of relying on the flush at shutdown
    def arrived() -> bool:
        spans, points = receiver.received.snapshot()
        span_names = {span["name"] for span in spans}
        metric_names = {point["attributes"].get(semconv.CALLBACK_NAME) for point in points}
        return (
            f"{semconv.SPAN_CALLBACK} get_failing_teardown" in span_names
            and {
                "get_failing_teardown",
                "release_connection",
            }
            <= metric_names
        )

    wait_until(arrived, "the last request's span and metric points", EXPORT_DEADLINE, interval=0.1)


@pytest.fixture(scope="module")
def exported() -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """Runs the app under opentelemetry-instrument, sends requests, stops it; what arrived over OTLP."""
    instrument = Path(sys.executable).parent / "opentelemetry-instrument"
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    with OtlpReceiver() as receiver:
        env = {
            **os.environ,
            "OTEL_SERVICE_NAME": "zero-code-test",
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_METRICS_EXPORTER": "otlp",
            "OTEL_LOGS_EXPORTER": "none",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_METRIC_EXPORT_INTERVAL": "500",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        }
        command = [str(instrument), sys.executable, "-m", "uvicorn", "tests.support.zero_code_app:app"]
        command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        process = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE)
        try:
            wait_until_serving(process, base_url + "/api/items/0", STARTUP_DEADLINE)
            with httpx.Client(base_url=base_url, timeout=30) as http:
                upload = {"file": ("report.txt", b"hello upload", "text/plain")}
                response = http.post("/api/upload", data={"title": "report"}, files=upload)
                assert response.status_code == 200, response.text
                response = http.post("/starlette/upload", data={"a": "1"}, files=upload)
                assert response.text == "fields=2"
                # the teardown raises after the response is complete: uvicorn logs it, the client is served
                assert http.get("/api/teardown-fails").json() == {"value": "x"}
        finally:
            wait_for_exports(receiver)
            stderr = stop(process)
        spans, points = receiver.received.snapshot()
        assert receiver.received.errors == []
    return spans, points, stderr.decode(errors="replace")[-2000:]


def ours(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [item for item in items if item["scope"] == semconv.SCOPE_NAME]


def test_spans_and_metrics_arrive_for_fastapi_and_starlette(
    exported: tuple[list[dict[str, Any]], list[dict[str, Any]], str],
) -> None:
    spans, points, stderr = exported
    unwinds = [span for span in ours(spans) if span["name"] == semconv.SPAN_UNWIND]
    unwound = {
        (span["attributes"][semconv.STACK_NAME], span["attributes"].get(semconv.HTTP_ROUTE))
        for span in unwinds
    }
    # the default "problems" mode: a span only for the unwind whose teardown failed
    assert unwound == {("fastapi_inner_astack", "/teardown-fails")}, stderr
    unwind_counts = {
        (point["attributes"][semconv.STACK_NAME], point["attributes"].get(semconv.HTTP_ROUTE)): point["count"]
        for point in ours(points)
        if point["metric"] == semconv.UNWIND_DURATION
    }
    # every unwind that ran a callback is measured; the empty ones appear nowhere
    assert unwind_counts.get(("fastapi_middleware_astack", "/upload")) == 1, unwind_counts
    assert unwind_counts.get(("fastapi_inner_astack", "/upload")) == 1, unwind_counts
    assert unwind_counts.get(("fastapi_function_astack", "/upload")) == 1, unwind_counts
    assert ("fastapi_middleware_astack", "/teardown-fails") not in unwind_counts
    # Starlette before 1.0 puts no matched route in the scope, so the route is not looked for here
    starlette = [count for (stack, _), count in unwind_counts.items() if stack == "starlette_astack"]
    assert starlette == [1], unwind_counts

    failed = [span for span in ours(spans) if span["name"] == f"{semconv.SPAN_CALLBACK} get_failing_teardown"]
    assert len(failed) == 1, stderr
    assert failed[0]["attributes"][semconv.CALLBACK_OUTCOME] == semconv.OUTCOME_ERROR
    assert failed[0]["attributes"][semconv.STACK_NAME] == "fastapi_inner_astack"

    durations = {
        (point["attributes"][semconv.STACK_NAME], point["attributes"][semconv.CALLBACK_NAME])
        for point in ours(points)
        if point["metric"] == semconv.CALLBACK_DURATION and point["count"]
    }
    assert {
        ("fastapi_middleware_astack", "FormData.close"),
        ("fastapi_inner_astack", "get_db"),
        ("fastapi_function_astack", "get_sync_resource"),
        ("starlette_astack", "release_connection"),
    } <= durations, stderr
    pushed = {
        point["attributes"][semconv.CALLBACK_NAME]: point["value"]
        for point in ours(points)
        if point["metric"] == semconv.CALLBACK_PUSHED
    }
    assert pushed["get_sync_resource"] >= 1


def test_unwinds_join_the_fastapi_server_spans_trace(
    exported: tuple[list[dict[str, Any]], list[dict[str, Any]], str],
) -> None:
    # opentelemetry-instrumentation-fastapi is installed too, so its server span is the parent
    spans, _, stderr = exported
    by_id = {span["span_id"]: span for span in spans}
    unwinds = [
        span
        for span in ours(spans)
        if span["name"] == semconv.SPAN_UNWIND
        and str(span["attributes"][semconv.STACK_NAME]).startswith("fastapi_")
    ]
    assert len(unwinds) == 1, stderr  # the failed teardown's: "problems" mode makes no other
    for unwind in unwinds:
        parent = by_id[unwind["parent_span_id"]]
        assert parent["kind"] == 2  # SPAN_KIND_SERVER
        assert parent["trace_id"] == unwind["trace_id"]
        assert parent["attributes"].get("http.route") == "/teardown-fails"


SIGTERMED = """
import os, signal, sys, time
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
from exitstack_otel.instrumentor import ExitStackInstrumentor

# an hour between exports: what arrives, the flush at SIGTERM sent
reader = PeriodicExportingMetricReader(
    ConsoleMetricExporter(out=sys.stdout), export_interval_millis=3_600_000
)
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
ExitStackInstrumentor().instrument()
metrics.get_meter("test").create_counter("measured.before.sigterm").add(7)
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(60)
"""


def test_a_process_stopped_by_sigterm_exports_what_it_measured_and_still_dies_by_it() -> None:
    result = subprocess.run([sys.executable, "-c", SIGTERMED], capture_output=True, text=True, timeout=120)
    assert result.returncode == -signal.SIGTERM, result.stderr  # the exit status a supervisor expects
    assert '"measured.before.sigterm"' in result.stdout, result.stdout + result.stderr
    assert '"value": 7' in result.stdout
