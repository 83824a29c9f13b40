"""FastAPI's own telemetry (``FastAPI(telemetry={...})``, 0.165+) and ours, on two real SDK providers.

The global provider stands for what ``opentelemetry-instrument`` sets up; the app gives FastAPI a
provider of its own. Our telemetry for that app must use FastAPI's providers (unless
``instrument_fastapi`` is given others), leave out what FastAPI's ``exclude`` leaves out, and never
leave one of FastAPI's spans with a parent its exporter never received.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from opentelemetry import metrics, trace

from exitstack_otel import semconv
from exitstack_otel.fastapi import (
    FastAPITelemetry,
    fastapi_telemetry,
    instrument_fastapi,
    uninstrument_fastapi,
)
from exitstack_otel.instrumentor import ExitStackInstrumentor
from tests.support.otel_helpers import Sdk, attrs, histogram_points, reset_global_providers

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator, MutableMapping

    from opentelemetry.sdk.trace import ReadableSpan

pytestmark = pytest.mark.skipif(
    not hasattr(FastAPI(), "_telemetry"), reason="FastAPI before 0.165 has no telemetry of its own"
)

CLEANUP_SPAN = "session.close"


@pytest.fixture
def global_sdk() -> Iterator[Sdk]:
    reset_global_providers()
    sdk = Sdk()
    trace.set_tracer_provider(sdk.tracer_provider)
    metrics.set_meter_provider(sdk.meter_provider)
    yield sdk
    reset_global_providers()
    sdk.shutdown()


@pytest.fixture
def fastapi_sdk(sdk: Sdk) -> Sdk:
    return sdk


async def get_session(request: Request) -> AsyncIterator[str]:
    """A yield dependency that makes a span of its own (on the app's provider) while it closes."""
    yield "session"
    with request.app.state.tracer.start_as_current_span(CLEANUP_SPAN):
        pass


async def get_plain() -> AsyncIterator[str]:
    yield "plain"


def build_app(sdk: Sdk, exclude: Callable[[MutableMapping[str, Any]], bool] | None = None) -> FastAPI:
    app = FastAPI(
        telemetry={
            "tracer_provider": sdk.tracer_provider,
            "meter_provider": sdk.meter_provider,
            "exclude": exclude,
        }
    )
    app.state.tracer = sdk.tracer_provider.get_tracer("shop")

    @app.get("/items/{item_id}")
    async def read_item(item_id: int, session: Annotated[str, Depends(get_session)]) -> dict[str, object]:
        return {"item_id": item_id, "session": session}

    @app.get("/health")
    async def health(session: Annotated[str, Depends(get_session)]) -> str:
        return "ok"

    return app


async def get(app: FastAPI, *paths: str) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        for path in paths:
            assert (await http.get(path)).status_code == 200


def orphans(spans: tuple[ReadableSpan, ...]) -> list[str]:
    """Spans whose parent is not among ``spans``: what a trace view shows as missing a parent."""
    received = {span.context.span_id for span in spans if span.context is not None}
    return [span.name for span in spans if span.parent is not None and span.parent.span_id not in received]


def ours(spans: tuple[ReadableSpan, ...]) -> list[ReadableSpan]:
    return [
        span
        for span in spans
        if span.instrumentation_scope is not None and span.instrumentation_scope.name == semconv.SCOPE_NAME
    ]


def unwound_routes(spans: tuple[ReadableSpan, ...]) -> set[object]:
    unwinds = [span for span in ours(spans) if span.name == semconv.SPAN_UNWIND]
    return {(span.attributes or {}).get(semconv.HTTP_ROUTE) for span in unwinds}


def metric_names(sdk: Sdk) -> set[str]:
    return set(sdk.metrics())


@pytest.mark.anyio
async def test_our_telemetry_uses_fastapis_providers_and_orphans_none_of_its_spans(
    global_sdk: Sdk, fastapi_sdk: Sdk
) -> None:
    app = build_app(fastapi_sdk)
    instrument_fastapi(app, callback_spans="all")
    try:
        await get(app, "/items/1", "/items/2")
    finally:
        uninstrument_fastapi(app)

    spans = fastapi_sdk.spans()
    assert [span.name for span in spans].count(CLEANUP_SPAN) == 2
    assert orphans(spans) == []
    # the dependency's cleanup span nests under our unwind, which nests under FastAPI's request span
    by_id = {span.context.span_id: span for span in spans if span.context is not None}
    for cleanup in fastapi_sdk.spans_named(CLEANUP_SPAN):
        assert cleanup.parent is not None
        unwind = by_id[cleanup.parent.span_id]
        assert unwind.name == semconv.SPAN_UNWIND
        assert unwind.parent is not None
        assert by_id[unwind.parent.span_id].kind == trace.SpanKind.SERVER
    assert f"{semconv.SPAN_CALLBACK} get_session" in {span.name for span in ours(spans)}
    # nothing of ours went to the global provider, and our metrics are beside FastAPI's
    assert global_sdk.spans() == ()
    assert {semconv.CALLBACK_DURATION, "http.server.request.duration"} <= metric_names(fastapi_sdk)
    assert semconv.CALLBACK_DURATION not in metric_names(global_sdk)


@pytest.mark.anyio
async def test_explicit_providers_win_over_fastapis(global_sdk: Sdk, fastapi_sdk: Sdk) -> None:
    app = build_app(fastapi_sdk)
    explicit = Sdk()
    instrument_fastapi(
        app,
        tracer_provider=explicit.tracer_provider,
        meter_provider=explicit.meter_provider,
        callback_spans="all",
    )
    try:
        await get(app, "/items/1")
    finally:
        uninstrument_fastapi(app)
        explicit.shutdown()
    assert f"{semconv.SPAN_CALLBACK} get_session" in {span.name for span in ours(explicit.spans())}
    assert ours(fastapi_sdk.spans()) == []
    assert semconv.CALLBACK_DURATION in metric_names(explicit)
    assert semconv.CALLBACK_DURATION not in metric_names(fastapi_sdk)


@pytest.mark.anyio
async def test_requests_fastapi_excludes_are_not_observed(global_sdk: Sdk, fastapi_sdk: Sdk) -> None:
    seen: list[str] = []

    def exclude(scope: MutableMapping[str, Any]) -> bool:
        seen.append(scope["path"])
        return bool(scope["path"] == "/health")

    app = build_app(fastapi_sdk, exclude=exclude)
    instrument_fastapi(app, callback_spans="all")
    try:
        await get(app, "/health", "/items/1", "/health")
    finally:
        uninstrument_fastapi(app)
    assert "/health" in seen
    assert unwound_routes(fastapi_sdk.spans()) == {"/items/{item_id}"}
    metrics_seen = fastapi_sdk.metrics()
    executed = {
        attrs(point)[semconv.CALLBACK_NAME]
        for point in histogram_points(metrics_seen[semconv.CALLBACK_DURATION])
    }
    assert "get_session" in executed
    unwound = {
        attrs(point).get(semconv.HTTP_ROUTE)
        for point in histogram_points(metrics_seen[semconv.UNWIND_DURATION])
    }
    assert unwound == {"/items/{item_id}"}
    assert orphans(fastapi_sdk.spans()) == []


@pytest.mark.anyio
async def test_a_failing_exclude_hook_leaves_the_request_observed(
    global_sdk: Sdk, fastapi_sdk: Sdk, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    def exclude(scope: MutableMapping[str, Any]) -> bool:
        nonlocal calls
        calls += 1
        if calls > 1:  # FastAPI's own call passes; ours, the second, fails
            raise RuntimeError("hook broke")
        return False

    app = build_app(fastapi_sdk, exclude=exclude)
    instrument_fastapi(app)
    try:
        await get(app, "/items/1")
    finally:
        uninstrument_fastapi(app)
    executed = histogram_points(fastapi_sdk.metrics()[semconv.CALLBACK_DURATION])
    assert "get_session" in {attrs(point)[semconv.CALLBACK_NAME] for point in executed}
    assert "exclude hook failed" in caplog.text


@pytest.mark.anyio
async def test_the_instrumentor_uses_each_apps_fastapi_providers(global_sdk: Sdk, fastapi_sdk: Sdk) -> None:
    instrumentor = ExitStackInstrumentor()
    instrumentor.instrument(callback_spans="all")
    try:
        own = build_app(fastapi_sdk, exclude=lambda scope: scope["path"] == "/health")
        plain = FastAPI()

        @plain.get("/plain")
        async def plain_route(plain: Annotated[str, Depends(get_plain)]) -> str:
            return plain

        await get(own, "/items/1", "/health")
        await get(plain, "/plain")
    finally:
        instrumentor.uninstrument()
    # the app with its own providers: ours beside FastAPI's, /health left out, no orphan
    own_spans = fastapi_sdk.spans()
    assert unwound_routes(own_spans) == {"/items/{item_id}"}
    assert orphans(own_spans) == []
    # the app without: the global providers, as before
    assert unwound_routes(global_sdk.spans()) == {"/plain"}
    # once uninstrumented, the app's built stack passes requests straight through
    before = len(fastapi_sdk.spans())
    await get(own, "/items/2")
    assert len(ours(fastapi_sdk.spans()[before:])) == 0


def test_the_settings_read_from_an_app(sdk: Sdk) -> None:
    def exclude(scope: MutableMapping[str, Any]) -> bool:
        return False

    app = FastAPI(telemetry={"tracer_provider": sdk.tracer_provider, "exclude": exclude})
    assert fastapi_telemetry(app) == FastAPITelemetry(sdk.tracer_provider, None, exclude)
    assert fastapi_telemetry(FastAPI()) == FastAPITelemetry()
    assert fastapi_telemetry(object()) == FastAPITelemetry()
