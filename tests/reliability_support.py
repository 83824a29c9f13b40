"""Real uvicorn servers and SDK providers for the reliability tests (cancellation, storm, exporters)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.types import ASGIApp


class Sdk:
    """A tracer and a meter provider that keep everything they record in memory."""

    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def points(self, metric_name: str) -> list[Any]:
        data: MetricsData | None = self.reader.get_metrics_data()
        found: list[Any] = []
        for resource_metrics in data.resource_metrics if data else ():
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.name == metric_name:
                        found.extend(metric.data.data_points)
        return found

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


class ServerThread:
    """uvicorn on 127.0.0.1 and a free port, in a thread with its own event loop."""

    def __init__(self, app: ASGIApp, **config: Any) -> None:
        config.setdefault("log_level", "critical")
        config.setdefault("lifespan", "off")
        # uvicorn binds port 0 itself: on a socket handed over with sockets=[...] its connections
        # lose TCP_NODELAY and every keep-alive request waits ~40 ms for a delayed ACK
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, **config))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)
        if self.thread.is_alive():
            raise RuntimeError("uvicorn did not stop")


@contextmanager
def serve(app: ASGIApp, **config: Any) -> Iterator[ServerThread]:
    server = ServerThread(app, **config)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def wait_until(condition: Any, timeout: float = 30.0) -> None:
    """Polls a condition another thread makes true; a timeout fails the test, it measures nothing."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached within the time limit")
        time.sleep(0.005)
