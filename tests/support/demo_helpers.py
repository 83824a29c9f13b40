"""A demo app served by tests/support/servers.py's uvicorn, with an in-memory SDK and its report afterwards.

Stopping the server waits for in-flight requests and their cleanup: the report is final.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.types import ASGIApp

from exitstack_otel.demo.report import CleanupReport, read_report
from exitstack_otel.fastapi import app_instrumentation, uninstrument_fastapi

from .otel_helpers import Sdk
from .servers import running_server

AppFactory = Callable[..., ASGIApp]


@dataclass
class RunningDemo:
    url: str
    app: ASGIApp
    reader: InMemoryMetricReader
    spans: InMemorySpanExporter
    report: CleanupReport | None = None  # filled in once the server has stopped


@contextmanager
def serve_in_thread(factory: AppFactory, **app_options: object) -> Iterator[RunningDemo]:
    sdk = Sdk()
    try:
        app = factory(tracer_provider=sdk.tracer_provider, meter_provider=sdk.meter_provider, **app_options)
        try:
            with running_server(app, log_level="critical") as server:
                demo = RunningDemo(server.url(), app, sdk.reader, sdk.spans_exporter)
                yield demo
            # the server has stopped: every unwind has ended
            demo.report = read_report(sdk.reader)
        finally:
            if app_instrumentation(app) is not None:
                uninstrument_fastapi(app)  # puts back FastAPI's own AsyncExitStack for the next tests
    finally:
        sdk.shutdown()
