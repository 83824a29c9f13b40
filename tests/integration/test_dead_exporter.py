"""A dead or hanging telemetry backend never slows a request down or makes memory grow.

The real OTLP/HTTP exporters, behind the SDK's BatchSpanProcessor and PeriodicExportingMetricReader,
point at a healthy receiver, at a closed port and at a socket that accepts and never answers.
Every request gets a span per callback (``callback_spans="all"``), the most export work there is.
Latency figures are printed (docs/reliability.md records them), not asserted: what is asserted is
that requests keep completing while an export hangs, and that nothing of ours grows.
"""

from __future__ import annotations

import asyncio
import http.server
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from exitstack_otel import ExitStackMiddleware, get_exit_stack
from tests.support.leaks import rss_bytes
from tests.support.polling import wait_until
from tests.support.servers import running_server, serving_http

REQUESTS = 600
WARMUP = 60
CONCURRENCY = 8
MAX_QUEUE = 512
EXPORT_TIMEOUT = 0.5


class _Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()
        self.server.received += 1  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: object) -> None:
        pass


class _ReceivingServer(http.server.ThreadingHTTPServer):
    received = 0


@contextmanager
def healthy_receiver() -> Iterator[str]:
    server = _ReceivingServer(("127.0.0.1", 0), _Receiver)
    with serving_http(server) as url:
        yield url
        assert server.received > 0, "the healthy receiver got no export"


@contextmanager
def closed_port() -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there any more: every export is refused
    yield f"http://127.0.0.1:{port}"


class Blackhole:
    """Accepts connections and never answers; counts requests finished while an export hangs."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.closing = False

    def _accept(self) -> None:
        while not self.closing:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.held.append(conn)

    @property
    def hanging(self) -> bool:
        return bool(self.held)


@contextmanager
def blackhole() -> Iterator[Blackhole]:
    hole = Blackhole()
    hole.thread.start()
    try:
        yield hole
    finally:
        hole.closing = True
        hole.listener.close()
        for conn in hole.held:
            conn.close()


@dataclass
class Figures:
    latencies: list[float] = field(default_factory=list)
    finished_while_export_hangs: int = 0
    rss_after_warmup: int = 0
    rss_at_end: int = 0

    def percentile(self, q: int) -> float:
        return statistics.quantiles(self.latencies, n=100)[q - 1]


async def load(url: str, requests: int, figures: Figures | None, hole: Blackhole | None) -> None:
    async with httpx.AsyncClient(base_url=url, limits=httpx.Limits(max_connections=CONCURRENCY)) as client:

        async def worker(count: int) -> None:
            for _ in range(count):
                start = time.perf_counter()
                response = await client.get("/work")
                elapsed = time.perf_counter() - start
                assert response.status_code == 200
                if figures is not None:
                    figures.latencies.append(elapsed)
                    if hole is not None and hole.hanging:
                        figures.finished_while_export_hangs += 1

        await asyncio.gather(*(worker(requests // CONCURRENCY) for _ in range(CONCURRENCY)))


def run_against(endpoint: str, hole: Blackhole | None = None) -> tuple[Figures, dict[str, int]]:
    span_exporter = OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces", timeout=EXPORT_TIMEOUT)
    processor = BatchSpanProcessor(
        span_exporter, max_queue_size=MAX_QUEUE, schedule_delay_millis=100, export_timeout_millis=500
    )
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(processor)
    reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=f"{endpoint}/v1/metrics", timeout=EXPORT_TIMEOUT),
        export_interval_millis=200,
        export_timeout_millis=500,
    )
    meter_provider = MeterProvider(metric_readers=[reader])

    async def work(request: Request) -> PlainTextResponse:
        stack = get_exit_stack(request)
        stack.callback(len, "a")
        stack.push_async_callback(asyncio.sleep, 0)
        return PlainTextResponse("ok")

    app = ExitStackMiddleware(
        Starlette(routes=[Route("/work", work)]),
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        callback_spans="all",
    )
    try:
        figures = Figures()
        with running_server(app) as server:
            asyncio.run(load(server.url(), WARMUP, None, hole))
            if hole is not None:
                # the first export now hangs: measure from here
                wait_until(lambda: hole.hanging, "the first export to reach the silent collector")
            figures.rss_after_warmup = rss_bytes()
            asyncio.run(load(server.url(), REQUESTS, figures, hole))
            figures.rss_at_end = rss_bytes()
            telemetry = app.telemetry.current()
            assert telemetry is not None
            queue = processor._batch_processor._queue
            sizes = {
                "span queue": len(queue),
                "callback infos": len(telemetry._infos),
                "unwind series": len(telemetry.unwind_series_by_key),
                "pushed counters": len(telemetry.instruments.pushed) if telemetry.instruments else 0,
            }
            assert queue.maxlen == MAX_QUEUE
    finally:
        tracer_provider.shutdown()
        meter_provider.shutdown()
    return figures, sizes


@pytest.mark.slow
def test_a_dead_or_hanging_backend_costs_requests_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    rss_before = rss_bytes()
    with healthy_receiver() as url:
        healthy, healthy_sizes = run_against(url)
    with closed_port() as url:
        refused, refused_sizes = run_against(url)
    with blackhole() as hole:
        hanging, hanging_sizes = run_against(f"http://127.0.0.1:{hole.listener.getsockname()[1]}", hole)
        assert hole.held, "the exporter never tried the blackhole"
    rss_after = rss_bytes()

    # requests kept completing while an export sat on the unanswered socket
    assert hanging.finished_while_export_hangs > REQUESTS // 2
    # one (stack, name, kind) per callback, one attribute set per route/method/outcome: fixed
    # however many requests ran, whatever the backend does
    for sizes in (healthy_sizes, refused_sizes, hanging_sizes):
        assert sizes["callback infos"] == 2
        assert sizes["pushed counters"] == 2
        assert sizes["unwind series"] <= 3
        assert sizes["span queue"] <= MAX_QUEUE

    with capsys.disabled():
        print(
            f"\ndead exporter: {REQUESTS} requests per backend, {CONCURRENCY} concurrent, all callback spans"
        )
        for name, figures in (("healthy", healthy), ("closed port", refused), ("never answers", hanging)):
            p50, p99 = figures.percentile(50), figures.percentile(99)
            ratio50, ratio99 = p50 / healthy.percentile(50), p99 / healthy.percentile(99)
            print(
                f"  {name:14} p50 {p50 * 1e3:6.2f} ms  p99 {p99 * 1e3:6.2f} ms  "
                f"vs healthy: p50 x{ratio50:.2f}  p99 x{ratio99:.2f}  "
                f"RSS {figures.rss_after_warmup / 2**20:.1f} -> {figures.rss_at_end / 2**20:.1f} MiB"
            )
        print(f"  finished while an export hung: {hanging.finished_while_export_hangs}/{REQUESTS}")
        print(f"  process RSS {rss_before / 2**20:.1f} MiB -> {rss_after / 2**20:.1f} MiB (imports included)")
