"""A monitoring stack run from real programs (Prometheus, Alertmanager, the demo) for the end-to-end
tests: their processes and logs, Alertmanager's webhook receiver on loopback, and PromQL queries."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from .polling import wait_for
from .servers import serving_http

WAIT_SECONDS = 60.0  # generous upper bound for each thing we wait for; normally a few seconds

# Grafana fills these in (the _ms one first: it starts with the other's name); a rate window of 15 s holds
# 15 scrapes at the test's 1 s interval
GRAFANA_VARIABLES = {
    "$__rate_interval_ms": "15000",
    "$__rate_interval": "15s",
    "$__range": "5m",
    "$service": ".*",
    "$instance": ".*",
    "$stack": ".*",
    "$route": ".*",
    "$callback": ".*",
}

T = TypeVar("T")


def wait_for_probe(what: str, probe: Callable[[], T | None], process_logs: list[Path]) -> T:
    def read() -> T | None:
        try:
            return probe()
        except httpx.HTTPError:  # not listening yet
            return None

    try:
        return wait_for(read, what, WAIT_SECONDS, interval=0.5)
    except AssertionError as gave_up:
        logs = "\n".join(f"--- {log.name}\n{log.read_text()[-2000:]}" for log in process_logs if log.exists())
        pytest.fail(f"{gave_up}\n{logs}")


@dataclass
class Webhook:
    """Alertmanager's webhook receivers, on loopback: collects the notifications sent to each path."""

    received: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    arrived: list[float] = field(default_factory=list)  # time.monotonic() of each, as it came

    def alerts(self, path: str) -> list[dict[str, Any]]:
        return [alert for to, body in list(self.received) if to == path for alert in body["alerts"]]

    def serving(self) -> AbstractContextManager[str]:
        """Serve until the block ends; its base URL."""
        received, arrived = self.received, self.arrived

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                arrived.append(time.monotonic())
                received.append((self.path, json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return serving_http(ThreadingHTTPServer(("127.0.0.1", 0), Handler))


@dataclass
class Stack:
    prometheus: str
    alertmanager: str
    webhook: Webhook
    logs: list[Path]

    def query(self, promql: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.prometheus}/api/v1/query", params={"query": promql}, timeout=10)
        body = response.json()
        assert body["status"] == "success", f"{promql}\n{body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait_for(self, what: str, probe: Callable[[], T | None]) -> T:
        return wait_for_probe(what, probe, self.logs)


class Processes:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.running: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = self.log_dir / f"{name}.log"
        self.logs.append(log)
        with log.open("wb") as out:
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        self.running.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.running):
            process.terminate()
        for process in self.running:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
