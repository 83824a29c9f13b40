"""Traces that connect: with OpenTelemetry's ASGI or FastAPI instrumentation outside, every
``exitstack.unwind`` is a child of the request's server span, in the same trace."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import fastapi
import httpx
import pytest
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

from exitstack_otel import semconv
from exitstack_otel.fastapi import instrument_fastapi, uninstrument_fastapi
from tests.support.fastapi_app import build_app
from tests.support.otel_helpers import Sdk
from tests.support.span_tree import render, without_timings

if TYPE_CHECKING:
    from starlette.types import ASGIApp


async def post_upload(app: ASGIApp) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        upload = {"file": ("report.txt", b"hello upload", "text/plain")}
        response = await http.post("/upload", data={"title": "report"}, files=upload)
    assert response.status_code == 200


def check_unwinds_are_children_of_the_server_span(spans: tuple[ReadableSpan, ...]) -> None:
    servers = [span for span in spans if span.kind == SpanKind.SERVER]
    assert len(servers) == 1, [span.name for span in spans]
    server = servers[0]
    assert server.context is not None
    assert server.end_time is not None
    unwinds = {
        str(span.attributes[semconv.STACK_NAME]): span
        for span in spans
        if span.name == semconv.SPAN_UNWIND and span.attributes
    }
    assert set(unwinds) == {"fastapi_middleware_astack", "fastapi_inner_astack", "fastapi_function_astack"}
    for unwind in unwinds.values():
        assert unwind.parent is not None
        assert unwind.parent.span_id == server.context.span_id
        assert unwind.context is not None
        assert unwind.context.trace_id == server.context.trace_id

    # function-scoped dependencies close before the response is sent; the request's stacks close
    # after its last chunk, when the server span has already ended: a child starting after its parent
    function = unwinds["fastapi_function_astack"]
    inner = unwinds["fastapi_inner_astack"]
    files = unwinds["fastapi_middleware_astack"]
    assert function.end_time is not None
    assert function.end_time <= server.end_time
    assert inner.start_time is not None
    assert inner.start_time >= server.end_time
    assert files.start_time is not None
    assert files.start_time >= server.end_time

    callbacks = [span for span in spans if span.name.startswith(semconv.SPAN_CALLBACK + " ")]
    assert callbacks
    for callback in callbacks:
        assert callback.parent is not None
        assert callback.parent.span_id in {
            unwind.context.span_id for unwind in unwinds.values() if unwind.context is not None
        }
        assert callback.context is not None
        assert callback.context.trace_id == server.context.trace_id


@pytest.mark.anyio
async def test_under_the_asgi_middleware(sdk: Sdk) -> None:
    app = build_app()
    instrument_fastapi(app, tracer_provider=sdk.tracer_provider, callback_spans="all")
    try:
        wrapped = OpenTelemetryMiddleware(
            app, tracer_provider=sdk.tracer_provider, meter_provider=sdk.meter_provider
        )
        await post_upload(wrapped)
    finally:
        uninstrument_fastapi(app)

    check_unwinds_are_children_of_the_server_span(sdk.spans())


@pytest.mark.anyio
@pytest.mark.parametrize("ours_first", [True, False], ids=["ours-first", "fastapi-instrumentor-first"])
async def test_under_the_fastapi_instrumentation(sdk: Sdk, ours_first: bool) -> None:
    app = build_app()

    def ours() -> None:
        instrument_fastapi(app, tracer_provider=sdk.tracer_provider, callback_spans="all")

    def theirs() -> None:
        FastAPIInstrumentor.instrument_app(
            app, tracer_provider=sdk.tracer_provider, meter_provider=sdk.meter_provider
        )

    first, second = (ours, theirs) if ours_first else (theirs, ours)
    first()
    second()
    try:
        await post_upload(app)
    finally:
        FastAPIInstrumentor.uninstrument_app(app)
        uninstrument_fastapi(app)

    check_unwinds_are_children_of_the_server_span(sdk.spans())


README = Path(__file__).resolve().parent.parent / "README.md"


def readme_trace() -> tuple[str, str]:
    text = README.read_text(encoding="utf-8")
    found = re.search(r"<!-- trace: fastapi (\S+) -->\n```text\n(.*?)\n```", text, re.DOTALL)
    assert found is not None, "README.md has no trace block"
    return found.group(1), found.group(2)


@pytest.mark.anyio
async def test_readme_trace_is_what_a_real_run_gives(sdk: Sdk) -> None:
    version, tree = readme_trace()
    if version != fastapi.__version__:
        pytest.skip(f"README's trace was rendered with FastAPI {version}, this is {fastapi.__version__}")
    app = build_app()
    instrument_fastapi(
        app,
        tracer_provider=sdk.tracer_provider,
        meter_provider=sdk.meter_provider,
        callback_spans="all",
    )
    try:
        await post_upload(
            OpenTelemetryMiddleware(
                app, tracer_provider=sdk.tracer_provider, meter_provider=sdk.meter_provider
            )
        )
    finally:
        uninstrument_fastapi(app)

    assert without_timings(tree) == render(sdk.spans(), timings=False)
