"""ExitStackInstrumentor in process: found by its entry point, instruments every FastAPI app, undone fully."""

from __future__ import annotations

import contextlib
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

import fastapi.middleware.asyncexitstack
import fastapi.routing
import httpx
import pytest
from fastapi.applications import FastAPI
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from exitstack_otel import semconv
from exitstack_otel.fastapi import FastAPIExitStack
from exitstack_otel.instrumentor import ExitStackInstrumentor
from tests.support.fastapi_app import build_app

if TYPE_CHECKING:
    from collections.abc import Iterator

ORIGINAL_BUILD = FastAPI.build_middleware_stack


def stack_classes() -> list[object]:
    return [module.AsyncExitStack for module in (fastapi.routing, fastapi.middleware.asyncexitstack)]


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = ExitStackInstrumentor()
    instrumentor.instrument(tracer_provider=provider, callback_spans="all")
    try:
        yield exporter
    finally:
        instrumentor.uninstrument()
        provider.shutdown()


async def get_item(app: FastAPI, item_id: int) -> int:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        return (await http.get(f"/items/{item_id}")).status_code


def dependency_spans(exporter: InMemorySpanExporter) -> list[str]:
    return [
        span.name for span in exporter.get_finished_spans() if span.name == f"{semconv.SPAN_CALLBACK} get_db"
    ]


def test_registered_under_the_opentelemetry_instrumentor_entry_point() -> None:
    found = [ep for ep in entry_points(group="opentelemetry_instrumentor") if ep.name == "exitstack"]
    assert len(found) == 1
    assert found[0].load() is ExitStackInstrumentor
    assert list(ExitStackInstrumentor().instrumentation_dependencies()) == ["fastapi >= 0.133"]


@pytest.mark.anyio
async def test_every_fastapi_app_is_instrumented_until_uninstrument(exporter: InMemorySpanExporter) -> None:
    first, second = build_app(), build_app()
    assert stack_classes() == [FastAPIExitStack, FastAPIExitStack]

    assert await get_item(first, 1) == 200
    assert await get_item(second, 2) == 200
    assert dependency_spans(exporter) == [f"{semconv.SPAN_CALLBACK} get_db"] * 2

    ExitStackInstrumentor().uninstrument()
    assert stack_classes() == [contextlib.AsyncExitStack, contextlib.AsyncExitStack]
    assert FastAPI.build_middleware_stack is ORIGINAL_BUILD
    # an app whose middleware was built while instrumented keeps working and stops recording
    assert await get_item(first, 3) == 200
    assert await get_item(build_app(), 4) == 200
    assert len(dependency_spans(exporter)) == 2


def test_unknown_keyword_is_named() -> None:
    with pytest.raises(TypeError, match="callback_span"):
        ExitStackInstrumentor().instrument(callback_span="all")
    assert stack_classes() == [contextlib.AsyncExitStack, contextlib.AsyncExitStack]


def test_sigterm_flushes_first_only_where_it_had_its_default_action() -> None:
    import signal

    from exitstack_otel import instrumentor as module

    before = signal.getsignal(signal.SIGTERM)
    assert before is signal.SIG_DFL  # pytest leaves SIGTERM alone
    instrumentor = ExitStackInstrumentor()
    instrumentor.instrument()
    try:
        assert signal.getsignal(signal.SIGTERM) is module._flush_then_exit
    finally:
        instrumentor.uninstrument()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

    def own(signum: int, frame: object) -> None:
        pass

    signal.signal(signal.SIGTERM, own)
    try:
        instrumentor.instrument()
        assert signal.getsignal(signal.SIGTERM) is own  # the application's handler is left alone
        instrumentor.uninstrument()
        assert signal.getsignal(signal.SIGTERM) is own
    finally:
        signal.signal(signal.SIGTERM, before)


def test_a_resource_without_service_instance_id_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    from opentelemetry.sdk.resources import Resource

    for resource, warned in (
        (Resource({"service.name": "shop"}), True),
        (Resource({"service.name": "shop", "service.instance.id": "a"}), False),
    ):
        caplog.clear()
        provider = TracerProvider(resource=resource)
        instrumentor = ExitStackInstrumentor()
        instrumentor.instrument(tracer_provider=provider)
        instrumentor.uninstrument()
        provider.shutdown()
        assert any("service.instance.id" in record.getMessage() for record in caplog.records) is warned
