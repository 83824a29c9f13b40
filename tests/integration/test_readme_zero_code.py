"""The README's zero-code commands, run as written. The leading one: ``opentelemetry-instrument uvicorn
--workers 2`` pushing over OTLP, where every worker reports under its own service.instance.id, a worker
stopped by SIGTERM flushes what it measured, and its replacement reports too. The Prometheus exporter
one (a single worker): ``/metrics`` serves our metrics, and the unwinds join the server span.

The commands come from README.md itself, so the test fails when the README drifts. What the test
changes is only what a machine of its own needs: the app (one of tests/support/readme_apps.py), free ports
for uvicorn and ``/metrics``, a local OTLP receiver as the collector, and a short span export
delay so the spans arrive while the server runs.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, metadata
from pathlib import Path
from typing import Any

import httpx
import pytest

from exitstack_otel import semconv
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.polling import last_reading, wait_for
from tests.support.processes import free_port, stop, wait_until_serving
from tests.support.readme_apps import readme_block

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# seconds; generous bounds for a loaded machine, never measurements
STARTUP_DEADLINE = 60.0
EXPORT_DEADLINE = 30.0
ASSIGNMENT = re.compile(r"^([A-Z][A-Z0-9_]*)=(.*)$")

pytestmark = pytest.mark.integration


@dataclass
class ZeroCode:
    """The README's zero-code block, taken apart."""

    requirements: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    argv: list[str] = field(default_factory=list)
    metrics_url: str = ""
    metrics_pattern: str = ""


def parse(block: str) -> ZeroCode:
    found = ZeroCode()
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words[:2] == ["pip", "install"]:
            found.requirements += words[2:]
        elif words[:1] == ["curl"]:
            found.metrics_url = next(word for word in words if word.startswith("http"))
            found.metrics_pattern = words[words.index("grep") + 1]
        elif words:
            while words and ASSIGNMENT.match(words[0]):
                name, value = ASSIGNMENT.match(words.pop(0)).groups()  # type: ignore[union-attr]
                found.env[name] = value
            found.argv = words
    return found


def test_the_readme_installs_what_it_runs() -> None:
    zero_code = parse(readme_block("zero-code-prometheus"))
    starlette_snippet = readme_block("zero-code-starlette")
    extra = re.search(r"# pip install (\S+)", starlette_snippet)
    assert extra is not None, "the Starlette snippet names the package it needs"
    leading = parse(readme_block("zero-code"))
    # "." is this checkout (README: Install): exitstack-otel is not on PyPI yet
    for block in (leading, zero_code):
        assert not any(r.startswith("exitstack-otel") for r in block.requirements), block.requirements
    for requirement in [*leading.requirements, *zero_code.requirements, extra.group(1)]:
        name, _, extras = requirement.partition("[")
        name = "exitstack-otel" if name == "." else name
        try:
            provided = metadata(name).get_all("Provides-Extra") or []
        except PackageNotFoundError:
            pytest.fail(f"the README installs {name}, which is not installed here")
        for wanted in filter(None, extras.rstrip("]").split(",")):
            assert wanted in provided, f"{name} has no extra {wanted!r}"
    assert zero_code.argv[:2] == ["opentelemetry-instrument", "uvicorn"]
    assert zero_code.env["OTEL_METRICS_EXPORTER"] == "prometheus"
    # the curl line fetches what the exporter serves
    prometheus = (
        f"{zero_code.env['OTEL_EXPORTER_PROMETHEUS_HOST']}:{zero_code.env['OTEL_EXPORTER_PROMETHEUS_PORT']}"
    )
    assert zero_code.metrics_url == f"http://{prometheus}/metrics"


def serve(
    zero_code: ZeroCode, target: str, receiver: OtlpReceiver
) -> tuple[subprocess.Popen[bytes], str, str]:
    """Starts the README's command for ``target``; returns it, the app's URL and the metrics URL."""
    app_port, metrics_port = free_port(), free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("OTEL_")}
    env.update(zero_code.env)
    readme_metrics_port = env["OTEL_EXPORTER_PROMETHEUS_PORT"]
    env["OTEL_EXPORTER_PROMETHEUS_PORT"] = str(metrics_port)
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
    env["OTEL_BSP_SCHEDULE_DELAY"] = "200"
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    argv = [target if word == "app:app" else word for word in zero_code.argv]
    assert target in argv, "the README serves app:app"
    argv[argv.index("--port") + 1] = str(app_port)
    host = argv[argv.index("--host") + 1]
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stderr=subprocess.PIPE)
    metrics_url = zero_code.metrics_url.replace(f":{readme_metrics_port}/", f":{metrics_port}/")
    return process, f"http://{host}:{app_port}", metrics_url


def executed(lines: list[str], callback: str) -> float:
    """How often ``callback`` ran, by the duration histogram's count series."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in lines
        if line.startswith("exitstack_callback_duration_seconds_count{")
        and f'exitstack_callback_name="{callback}"' in line
    )


def our_metric_lines(metrics_url: str, pattern: str, callback: str, count: int) -> list[str]:
    """What the README's ``curl | grep`` shows, once ``callback`` has run ``count`` times."""

    def scrape() -> list[str] | None:
        text = httpx.get(metrics_url, timeout=5).text
        lines = [line for line in text.splitlines() if re.search(pattern, line)]
        return lines if executed(lines, callback) >= count else None

    return wait_for(scrape, f"{callback} to run {count} times by {metrics_url}", EXPORT_DEADLINE, 0.2)


def wait_for_spans(receiver: OtlpReceiver, name: str, count: int) -> list[dict[str, Any]]:
    def spans() -> list[dict[str, Any]]:
        return receiver.received.snapshot()[0]

    # the caller asserts on what arrived, so that a failure shows it
    return last_reading(
        spans, lambda found: [span["name"] for span in found].count(name) >= count, EXPORT_DEADLINE
    )


@pytest.mark.parametrize(
    ("target", "callback"),
    [
        ("tests.support.readme_apps:fastapi_app", "get_session"),
        ("tests.support.readme_apps:starlette_app", "close_session"),
    ],
)
def test_the_readme_commands_serve_metrics_and_join_the_server_spans(target: str, callback: str) -> None:
    zero_code = parse(readme_block("zero-code-prometheus"))
    with OtlpReceiver() as receiver:
        process, url, metrics_url = serve(zero_code, target, receiver)
        try:
            wait_until_serving(process, url + "/orders/0", STARTUP_DEADLINE)
            for order_id in (1, 2, 3):  # slow cleanups: spans by default too
                assert httpx.get(f"{url}/orders/{order_id}?slow=1", timeout=30).status_code == 200
            # the readiness probe's request and the three slow ones
            lines = our_metric_lines(metrics_url, zero_code.metrics_pattern, callback, 4)
            spans = wait_for_spans(receiver, f"{semconv.SPAN_CALLBACK} {callback}", 3)
        finally:
            stderr = stop(process)
        log = stderr.decode(errors="replace")[-3000:]
        assert receiver.received.errors == [], log

    assert executed(lines, callback) >= 4, log
    assert any(line.startswith("exitstack_unwind_duration_seconds_count{") for line in lines), log

    by_id = {span["span_id"]: span for span in spans}
    slow = [span for span in spans if span["name"] == f"{semconv.SPAN_CALLBACK} {callback}"]
    assert len(slow) == 3, log
    unwinds = [by_id[span["parent_span_id"]] for span in slow]
    assert {unwind["name"] for unwind in unwinds} == {semconv.SPAN_UNWIND}
    for unwind in unwinds:
        parent = by_id.get(unwind["parent_span_id"])
        assert parent is not None, f"an unwind without its parent: {unwind}"
        assert parent["kind"] == 2  # SPAN_KIND_SERVER
        assert parent["trace_id"] == unwind["trace_id"]


# --- several workers: the README's leading command, OTLP push ------------------------------------------

WORKERS_APP = "tests.support.workers_app:app"


@dataclass
class Served:
    """What each worker answered, by its SDK's service.instance.id."""

    requests: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)

    def ask(self, url: str) -> str:
        answer = httpx.get(f"{url}/worker", timeout=30).json()  # a new connection: any worker may take it
        instance = answer["instance"]
        assert isinstance(instance, str), f"a worker without service.instance.id: {answer}"
        assert self.pids.setdefault(instance, answer["pid"]) == answer["pid"], "two workers, one instance id"
        self.requests[instance] = self.requests.get(instance, 0) + 1
        return instance


def reported_runs(receiver: OtlpReceiver) -> dict[str, int]:
    """get_session runs per service.instance.id, by the latest (cumulative) count of each series."""
    latest: dict[tuple[str, tuple[tuple[str, object], ...]], int] = {}
    for point in receiver.received.snapshot()[1]:
        attributes = point["attributes"]
        if (
            point["metric"] == semconv.CALLBACK_DURATION
            and attributes.get(semconv.CALLBACK_NAME) == "get_session"
        ):
            key = (str(point["resource"].get("service.instance.id")), tuple(sorted(attributes.items())))
            latest[key] = max(latest.get(key, 0), int(point["count"]))
    runs: dict[str, int] = {}
    for (instance, _), count in latest.items():
        runs[instance] = runs.get(instance, 0) + count
    return runs


def test_the_readme_command_with_two_workers_reports_every_worker_and_flushes_at_sigterm(
    tmp_path: Path,
) -> None:
    zero_code = parse(readme_block("zero-code"))
    assert zero_code.argv[:2] == ["opentelemetry-instrument", "uvicorn"]
    assert zero_code.argv[zero_code.argv.index("--workers") + 1] == "2"
    assert zero_code.env["OTEL_METRICS_EXPORTER"] == "otlp"
    # the SDK's default export interval: what a worker measured in its last minute arrives only if it
    # flushes when it stops
    assert "OTEL_METRIC_EXPORT_INTERVAL" not in zero_code.env
    port = free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("OTEL_")}
    env.update(zero_code.env)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    argv = [WORKERS_APP if word == "app:app" else word for word in zero_code.argv]
    argv[argv.index("--port") + 1] = str(port)
    url = f"http://{argv[argv.index('--host') + 1]}:{port}"
    served = Served()
    log = tmp_path / "uvicorn.log"
    with OtlpReceiver() as receiver:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
        with log.open("wb") as out:
            process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_until_serving(process, f"{url}/worker", STARTUP_DEADLINE)  # one request, to some worker
            # new connections until both workers have served a few
            for _ in range(2000):
                served.ask(url)
                if len(served.requests) == 2 and min(served.requests.values()) >= 3:
                    break
            assert len(served.requests) == 2, f"one worker took every connection: {served}"
            stopped = next(iter(served.requests))
            os.kill(served.pids[stopped], signal.SIGTERM)

            def flushed() -> dict[str, int] | None:
                runs = reported_runs(receiver)
                return runs if stopped in runs else None

            # the export interval is 60 s: a report within EXPORT_DEADLINE is the flush at shutdown
            at_stop = wait_for(flushed, "the SIGTERM'd worker's final export", EXPORT_DEADLINE, 0.2)
            # uvicorn replaces the stopped worker: a third instance id answers
            for _ in range(2000):
                served.ask(url)
                if len(served.pids) == 3:
                    break
            assert len(served.pids) == 3, f"no replacement worker answered: {served}"
        finally:
            stop(process)
        runs = wait_for(
            lambda: found if set(found := reported_runs(receiver)) >= set(served.requests) else None,
            "every worker's final export",
            EXPORT_DEADLINE,
            0.2,
        )
        output = log.read_text(errors="replace")[-3000:]
        assert receiver.received.errors == [], output
    assert "Failed to auto initialize" not in output, output
    # three workers, three instance ids: no two wrote into one series
    assert len(set(served.pids.values())) == len(served.pids) == 3
    assert set(runs) == set(served.requests), (runs, served)
    # every request a worker served is in what it reported (the readiness probe is one more, somewhere)
    assert at_stop[stopped] in (served.requests[stopped], served.requests[stopped] + 1), (at_stop, served)
    assert runs[stopped] == at_stop[stopped]
    differences = [runs[instance] - served.requests[instance] for instance in served.requests]
    assert sorted(differences) == [0, 0, 1], (runs, served)
