"""Failed and hung cleanup callbacks in the logs, with the route, the stack and the trace, from a real
uvicorn (tests/test_cleanup_log.py has the rate limit and the logger's name)."""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor

try:
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
except ImportError:  # the SDK before its rename (the 1.31 floor)
    from opentelemetry.sdk._logs.export import (
        InMemoryLogExporter as InMemoryLogRecordExporter,
    )
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from exitstack_otel import ExitStackMiddleware, get_exit_stack, semconv
from tests.support.otel_helpers import Sdk
from tests.support.polling import wait_until
from tests.support.servers import running_server

WAIT_SECONDS = 15.0  # the watcher looks once a second; a generous bound


class RefusedError(Exception):
    pass


def _records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("exitstack_otel") and r.levelno == level]


@pytest.fixture
def otel_logs() -> Iterator[InMemoryLogRecordExporter]:
    """OpenTelemetry's logging handler on our logger, exporting to memory."""
    exporter = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    with warnings.catch_warnings():
        # the SDK's handler is deprecated for opentelemetry-instrumentation-logging's, which works
        # the same way (it reads the current span): either turns our records into correlated logs
        warnings.simplefilter("ignore", DeprecationWarning)
        handler = LoggingHandler(logger_provider=provider)
    logger = logging.getLogger("exitstack_otel")
    logger.addHandler(handler)
    try:
        yield exporter
    finally:
        logger.removeHandler(handler)
        provider.shutdown()


def _app(sdk: Sdk, release: threading.Event | None = None, **options: Any) -> Starlette:
    def refuse() -> None:
        raise RefusedError("the audit store refused")

    async def failing(request: Request) -> PlainTextResponse:
        get_exit_stack(request).callback(refuse)
        return PlainTextResponse("ok")

    async def wait_for_release() -> None:
        assert release is not None
        # the test thread sets it once it has seen the warning
        await anyio.to_thread.run_sync(release.wait)

    async def hanging(request: Request) -> PlainTextResponse:
        get_exit_stack(request).push_async_callback(wait_for_release)
        return PlainTextResponse("ok")

    middleware = Middleware(
        ExitStackMiddleware, tracer_provider=sdk.tracer_provider, meter_provider=sdk.meter_provider, **options
    )
    return Starlette(
        routes=[Route("/orders/{order_id}", failing), Route("/hang", hanging)], middleware=[middleware]
    )


def test_a_failed_callback_is_logged_with_route_stack_and_trace(
    sdk: Sdk, caplog: pytest.LogCaptureFixture, otel_logs: InMemoryLogRecordExporter
) -> None:
    with caplog.at_level(logging.ERROR), running_server(_app(sdk)) as server:
        assert httpx.get(server.url("/orders/secret-7")).text == "ok"
        # the cleanup runs after the response: wait for it, not forever
        wait_until(lambda: _records(caplog, logging.ERROR), "the failed callback's log", WAIT_SECONDS)
    [record] = _records(caplog, logging.ERROR)
    [span] = [s for s in sdk.spans() if s.name.startswith(semconv.SPAN_CALLBACK)]
    message = record.getMessage()
    assert "callback _app.<locals>.refuse on" in message
    assert "exitstack_middleware" in message
    assert "/orders/{order_id}" in message
    assert "secret-7" not in message
    assert "tests.integration.test_cleanup_log.RefusedError" in message
    assert f"trace_id={span.context.trace_id:032x} span_id={span.context.span_id:016x}" in message
    assert record.exc_info is not None
    assert record.exc_info[0] is RefusedError
    # through OpenTelemetry's handler: a log record of the same trace, pointing at the callback span
    [exported] = [log for log in otel_logs.get_finished_logs() if "failed" in str(log.log_record.body)]
    assert exported.log_record.trace_id == span.context.trace_id
    assert exported.log_record.span_id == span.context.span_id


def test_a_hung_callback_is_warned_about_while_it_still_runs(
    sdk: Sdk, caplog: pytest.LogCaptureFixture
) -> None:
    release = threading.Event()
    app = _app(sdk, release, hung_callback_warning=0.2)
    with caplog.at_level(logging.WARNING), running_server(app) as server:
        assert httpx.get(server.url("/hang")).text == "ok"
        wait_until(lambda: _records(caplog, logging.WARNING), "the hung callback's warning", WAIT_SECONDS)
        warnings = _records(caplog, logging.WARNING)
        still_running = not release.is_set()
        release.set()
    assert still_running
    [record] = warnings
    message = record.getMessage()
    assert "wait_for_release" in message
    assert "still running after" in message
    assert "(route /hang)" in message
