"""A real uvicorn serving a demo app on 127.0.0.1 in a thread of its own, with an in-memory SDK.

The server thread has its own asyncio loop, so tests drive it with httpx from either anyio backend.
Stopping the server waits for in-flight requests and their cleanup: numbers read afterwards are final.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.types import ASGIApp

from exitstack_otel.demo.report import CleanupReport, read_report
from exitstack_otel.demo.server import base_url, bind
from exitstack_otel.fastapi import app_instrumentation, uninstrument_fastapi

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
    reader = InMemoryMetricReader()
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    meter_provider = MeterProvider(metric_readers=[reader])
    app = factory(tracer_provider=tracer_provider, meter_provider=meter_provider, **app_options)
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="critical", lifespan="off", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    started = threading.Event()
    while not server.started and thread.is_alive():
        started.wait(0.01)
    if not server.started:
        raise RuntimeError("uvicorn did not start")
    demo = RunningDemo(base_url(sock), app, reader, spans)
    try:
        yield demo
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
        demo.report = read_report(reader)
        if app_instrumentation(app) is not None:
            uninstrument_fastapi(app)  # puts back FastAPI's own AsyncExitStack for the next tests
        tracer_provider.shutdown()
        meter_provider.shutdown()
