"""``exitstack-otel`` run for real, in a subprocess, and its report checked against its own traffic."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from exitstack_otel.demo.report import format_seconds
from exitstack_otel.demo.server import bind
from exitstack_otel.fastapi_stack import STACK_KEYS
from tests.support.polling import wait_for
from tests.support.processes import free_port
from tests.support.servers import serving_http

COMMAND = [sys.executable, "-m", "exitstack_otel"]
CONSOLE_SCRIPT = str(Path(sys.executable).parent / "exitstack-otel")
TIMEOUT = 120  # generous: two cores are shared with other test runs


@pytest.fixture(autouse=True)
def _temp_dir_of_the_test(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the demo's cleanup log goes to the temp directory by default: the test's, here
    monkeypatch.setenv("TMPDIR", str(tmp_path))


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *args], capture_output=True, text=True, timeout=TIMEOUT, env={**os.environ, **(env or {})}
    )


def load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text())
    return document


def by_callback(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["callback"]: row for row in document["cleanup"]["callbacks"]}


def test_demo_report_matches_the_traffic_it_sent(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    share = 0.25
    result = run(
        "demo", "--duration", "3", "--rate", "60", "--failure-share", str(share), "--seed", "5",
        "--slow-share", "0.1", "--slow-seconds", "0.1", "--json-report", str(report_path),
        "--log-file", str(tmp_path / "cleanup.log"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    document = load(report_path)
    traffic, cleanup = document["traffic"], document["cleanup"]
    total = traffic["total"]
    assert total["errors"] == 0, traffic["last_error"]
    assert total["completed"] == total["sent"] > 50
    assert cleanup["never_ran"] == 0
    assert cleanup["unwinds_active"] == 0
    assert cleanup["unwinds"] == total["completed"]

    rows = by_callback(document)
    flush = rows["AuditLog.flush"]
    assert flush["executed"] == total["completed"]
    assert flush["failed"] == total["meant_to_fail"] == cleanup["failed"]
    # the generator draws failures at random: the share observed stays within 4 standard deviations
    n = flush["executed"]
    assert abs(flush["failed"] / n - share) <= 4 * (share * (1 - share) / n) ** 0.5
    kinds = traffic["kinds"]
    assert rows["FormData.close"]["executed"] == kinds["upload"]["completed"]
    assert rows["ResultCursor.close"]["executed"] == kinds["stream"]["completed"]
    assert rows["SessionStats.record"]["executed"] == kinds["websocket"]["completed"]
    assert (
        rows["ConnectionPool.release"]["executed"]
        == kinds["pool"]["completed"] + kinds["websocket"]["completed"]
    )
    assert all(row["pushed"] == row["executed"] for row in rows.values())
    assert document["pool"]["in_use"] == 0
    assert document["pool"]["acquired"] == document["pool"]["released"]
    # the pool's releases, by the callbacks that made them: streams give theirs back through the cursor
    assert document["pool"]["released_by"] == {
        "ConnectionPool.release": rows["ConnectionPool.release"]["executed"],
        "ResultCursor.close": rows["ResultCursor.close"]["executed"],
    }
    assert sum(document["pool"]["released_by"].values()) == document["pool"]["released"]
    quantiles = flush["duration_s"]
    assert 0 < quantiles["p50"] <= quantiles["p95"] <= quantiles["p99"] <= quantiles["max"]
    # the flushes the traffic told to be slow show in the max, however few they are
    assert total["meant_slow"] > 0
    assert quantiles["max"] >= 0.1
    # every unwind belongs to one stack; the demo's Starlette app has one
    (stack,) = cleanup["stacks"]
    assert stack["stack"] == flush["stack"]
    assert (stack["unwinds"], stack["active"]) == (cleanup["unwinds"], 0)

    # the text report says the same
    out = result.stdout
    assert f"Cleanups meant to fail: {total['meant_to_fail']}; failed: {flush['failed']}" in out
    # one vocabulary: the traffic table's columns are the JSON report's field names
    header = next(line for line in out.splitlines() if line.startswith("kind "))
    columns = header.replace("meant to fail", "meant_to_fail").replace("meant slow", "meant_slow").split()
    assert columns[0] == "kind"
    assert sorted(columns[1:]) == sorted(total)
    pool = document["pool"]
    assert (
        f"Connection pool: {pool['acquired']} acquired, {pool['released']} released, {pool['in_use']} in use"
        in out
    )
    released_by = pool["released_by"]
    assert (
        f"released by ConnectionPool.release {released_by['ConnectionPool.release']} (/pool, /ws) "
        f"and by ResultCursor.close {released_by['ResultCursor.close']} (/stream" in out
    )

    # the failures the traffic asked for are counted on stderr, not dumped; the file has them in full
    err = result.stderr
    assert "Traceback" not in err, err
    assert err.splitlines()[0].startswith("demo service (starlette) on http://127.0.0.1:"), err
    summary = next(line for line in err.splitlines() if line.startswith("cleanup log:"))
    assert summary.startswith("cleanup log: "), err
    assert " records of the failures the traffic asked for" in summary, err
    logged = int(summary.split()[2])
    # the library logs each kind of failure's first 10 (its failure budget), then one a second,
    # and 20 failures a minute at most
    assert min(total["meant_to_fail"], 10) <= logged <= min(total["meant_to_fail"], 20), err
    left_out = total["meant_to_fail"] - logged
    assert (f"and {left_out} more left out" in summary) == (left_out > 0), summary
    assert summary.endswith(f"in {tmp_path / 'cleanup.log'}")
    records = (tmp_path / "cleanup.log").read_text()
    assert records.count("Traceback (most recent call last)") == logged
    assert records.count("AuditFlushError: audit store refused the record") == logged
    if left_out:
        assert f"left {left_out} more failed cleanup callbacks out of the log" in records
    line = next(line for line in out.splitlines() if line.split()[1:2] == ["AuditLog.flush"])
    assert line.split()[2:6] == [str(n), str(n), str(flush["failed"]), "0"]
    assert line.split()[-1] == format_seconds(quantiles["max"])
    stack_line = next(line for line in out.splitlines() if line.split()[:2] == [stack["stack"], str(n)])
    assert stack_line.split()[2] == "0"


def test_console_script_runs_the_fastapi_variant(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    result = subprocess.run(
        [CONSOLE_SCRIPT, "demo", "--app", "fastapi", "--duration", "1.5", "--json-report", str(report_path)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    document = load(report_path)
    assert document["app"] == "fastapi"
    flush = by_callback(document)["AuditLog.flush"]
    assert flush["stack"] == "exitstack_demo_astack"
    assert flush["executed"] == document["traffic"]["total"]["completed"] > 0
    # our middleware's stack, once per request, and FastAPI's, at most once per request
    stacks = {stack["stack"]: stack["unwinds"] for stack in document["cleanup"]["stacks"]}
    assert {flush["stack"], "fastapi_inner_astack"} <= set(stacks) <= {flush["stack"], *STACK_KEYS}
    assert stacks[flush["stack"]] == flush["executed"]
    assert max(stacks.values()) == flush["executed"]
    assert document["pool"]["in_use"] == 0


def test_no_cleanup_observed_means_a_failing_exit(tmp_path: Path) -> None:
    # with the SDK switched off nothing is recorded, and the demo must say so rather than pass
    result = run("demo", "--duration", "0.5", env={"OTEL_SDK_DISABLED": "true"})
    assert result.returncode == 1
    assert "no cleanup was observed" in result.stderr


class Started:
    """The CLI in a subprocess, with its stderr collected line by line as it comes."""

    def __init__(self, args: list[str]) -> None:
        self.process = subprocess.Popen(
            [*COMMAND, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.lines: list[str] = []
        self._stdout: list[str] = []
        # both pipes read by threads of their own: communicate() would read stderr too, and close
        # it under the stderr reader (a ValueError in that thread, seen under load)
        self._reader = threading.Thread(
            target=self._read, args=(self.process.stderr, self.lines), daemon=True
        )
        self._stdout_reader = threading.Thread(
            target=self._read, args=(self.process.stdout, self._stdout), daemon=True
        )
        self._reader.start()
        self._stdout_reader.start()

    @staticmethod
    def _read(pipe: IO[str] | None, lines: list[str]) -> None:
        assert pipe is not None
        for line in pipe:
            lines.append(line)

    def wait_for_line(self, start: str) -> str:
        def line() -> str | None:
            found = [line for line in list(self.lines) if line.startswith(start)]
            if not found and self.process.poll() is not None and not self._reader.is_alive():
                raise AssertionError(f"exited with no line starting {start!r}; stderr: {''.join(self.lines)}")
            return found[0] if found else None

        return wait_for(line, f"a line starting {start!r}; stderr: {''.join(self.lines)}", TIMEOUT)

    def finish(self) -> str:
        self.process.wait(timeout=TIMEOUT)
        self._reader.join(TIMEOUT)
        self._stdout_reader.join(TIMEOUT)
        return "".join(self._stdout)


@contextmanager
def started(args: list[str]) -> Iterator[tuple[Started, str]]:
    """Start the CLI; yield it and its service URL once it announces it on stderr."""
    cli = Started(args)
    try:
        line = cli.wait_for_line("demo service (")
        yield cli, line.split(" on ", 1)[1].split(";")[0].split()[0]
    finally:
        if cli.process.poll() is None:
            cli.process.kill()
        cli.finish()
        for pipe in (cli.process.stdout, cli.process.stderr):
            if pipe is not None:
                pipe.close()


def wait_for_series(url: str, series: str) -> str:
    def scrape() -> str | None:
        text = httpx.get(url).text
        return text if series in text else None

    return wait_for(scrape, f"{series} at {url}", TIMEOUT, interval=0.2)


def test_ctrl_c_stops_the_demo_early_and_still_reports(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    metrics_port = free_port()
    args = [
        "demo",
        "--duration",
        "120",
        "--prometheus-port",
        str(metrics_port),
        "--json-report",
        str(report_path),
    ]
    with started(args) as (cli, _):
        wait_for_series(
            f"http://127.0.0.1:{metrics_port}/metrics", "exitstack_callback_duration_seconds_count"
        )
        cli.process.send_signal(signal.SIGINT)
        stdout = cli.finish()
    assert cli.process.returncode == 0
    assert "stopped early by SIGINT" in stdout
    document = load(report_path)
    assert document["interrupted_by"] == "SIGINT"
    total = document["traffic"]["total"]
    assert total["sent"] == total["completed"] + total["errors"] + total["interrupted"]
    cleanup = document["cleanup"]
    # requests cut off by the interrupt still had their cleanup run: nothing pushed was left behind
    assert cleanup["executed"] > 0
    assert cleanup["never_ran"] == 0
    assert cleanup["unwinds_active"] == 0
    assert document["pool"]["in_use"] == 0


def test_serve_with_prometheus_and_the_traffic_command(tmp_path: Path) -> None:
    metrics_port = free_port()
    serve_report, traffic_report = tmp_path / "serve.json", tmp_path / "traffic.json"
    args = [
        "demo",
        "--serve",
        "--port",
        "0",
        "--prometheus-port",
        str(metrics_port),
        "--json-report",
        str(serve_report),
    ]
    with started(args) as (cli, url):
        assert httpx.get(f"{url}/healthz").json()["status"] == "ok"
        traffic = subprocess.run(
            [*COMMAND, "traffic", "--target", url, "--duration", "1.5", "--failure-share", "0.3",
             "--json-report", str(traffic_report)],
            capture_output=True, text=True, timeout=TIMEOUT,
        )  # fmt: skip
        assert traffic.returncode == 0, traffic.stderr
        sent = load(traffic_report)["traffic"]["total"]
        assert sent["completed"] == sent["sent"] > 0
        assert "total" in traffic.stdout

        metrics = wait_for_series(
            f"http://127.0.0.1:{metrics_port}/metrics", "exitstack_callback_pushed_total"
        )
        pushed = [
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("exitstack_callback_pushed_total{")
            and 'exitstack_callback_name="AuditLog.flush"' in line
        ]
        assert pushed == [sent["completed"]]
        cli.process.send_signal(signal.SIGTERM)
        cli.finish()
    assert cli.process.returncode == 0
    cleanup = load(serve_report)["cleanup"]
    assert cleanup["failed"] == sent["meant_to_fail"]
    assert cleanup["unwinds"] == sent["completed"]  # /healthz pushed nothing: its unwind appears nowhere
    assert cleanup["never_ran"] == 0


def test_a_second_ctrl_c_stops_waiting_for_a_cleanup_and_the_report_shows_it(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    args = ["demo", "--serve", "--port", "0", "--slow-seconds", "600", "--json-report", str(report_path)]
    with started(args) as (cli, url), httpx.Client(base_url=url) as client:
        # the response comes first; its audit flush then sleeps for ten minutes
        assert client.get("/pool", params={"slow": "1"}).status_code == 200
        cli.process.send_signal(signal.SIGINT)
        cli.wait_for_line("stopping: waiting for in-flight requests")
        cli.process.send_signal(signal.SIGINT)
        stdout = cli.finish()
    assert cli.process.returncode == 0
    assert "stopped early by SIGINT" in stdout
    cleanup = load(report_path)["cleanup"]
    flush = by_callback({"cleanup": cleanup})["AuditLog.flush"]
    assert (flush["pushed"], flush["executed"], flush["never_ran"]) == (1, 0, 1)
    assert cleanup["unwinds_active"] == 1


class _Collector(BaseHTTPRequestHandler):
    received: dict[str, list[bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.setdefault(self.path, []).append(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def otlp_collector() -> Iterator[tuple[str, dict[str, list[bytes]]]]:
    received: dict[str, list[bytes]] = {}
    handler = type("Collector", (_Collector,), {"received": received})
    with serving_http(ThreadingHTTPServer(("127.0.0.1", 0), handler)) as url:
        yield url, received


def test_otlp_export_honours_the_standard_environment_variable() -> None:
    with otlp_collector() as (endpoint, received):
        result = run(
            "demo", "--duration", "1.5", "--failure-share", "0.5", "--seed", "2",
            env={"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint},
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    span_names = set()
    for body in received.get("/v1/traces", []):
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        span_names |= {
            span.name for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans
        }
    assert {"exitstack.unwind", "exitstack.callback AuditLog.flush"} <= span_names
    metric_names = set()
    for body in received.get("/v1/metrics", []):
        metrics_request = ExportMetricsServiceRequest()
        metrics_request.ParseFromString(body)
        metric_names |= {
            metric.name
            for rm in metrics_request.resource_metrics
            for sm in rm.scope_metrics
            for metric in sm.metrics
        }
    assert {"exitstack.callback.duration", "exitstack.callback.pushed"} <= metric_names


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--port", "cannot listen on 127.0.0.1:"),
        ("--prometheus-port", "cannot serve Prometheus metrics on 127.0.0.1:"),
    ],
)
def test_a_port_in_use_is_a_clear_error_not_a_traceback(flag: str, message: str) -> None:
    with bind("127.0.0.1", 0) as taken:
        taken.listen()
        port = str(taken.getsockname()[1])
        result = run("demo", "--serve", "--port", "0", flag, port)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"exitstack-otel: error: {message}{port}: ")
    assert "Traceback" not in result.stderr


def test_progress_is_redrawn_in_place_on_a_terminal_only() -> None:
    import pty

    leader, follower = pty.openpty()
    with os.fdopen(leader, "rb", buffering=0) as terminal:
        process = subprocess.Popen(
            [*COMMAND, "demo", "--duration", "2.5"], stdout=subprocess.PIPE, stderr=follower
        )
        os.close(follower)
        seen = b""
        while True:
            try:
                chunk = terminal.read(4096)
            except OSError:  # the terminal closes when the process is gone
                break
            if not chunk:
                break
            seen += chunk
        stdout = process.communicate(timeout=TIMEOUT)[0].decode()
        assert process.returncode == 0
    redraws = seen.count(b"\r\x1b[2K")
    assert redraws >= 2, seen  # one every half second
    assert b"req/s  executed" in seen
    assert b"Traceback" not in seen  # the requested failures no longer break the line
    assert "\x1b[2K" not in stdout  # the report itself stays plain


def test_progress_without_a_terminal_is_plain_occasional_lines(tmp_path: Path) -> None:
    result = run("demo", "--duration", "1")
    assert result.returncode == 0
    assert "\x1b" not in result.stderr
    assert "\r" not in result.stderr
    assert "sent " in result.stderr  # the final line, written once traffic stops
