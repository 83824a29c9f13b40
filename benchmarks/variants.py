"""The applications compared: the same Starlette endpoint behind each stack middleware.

The endpoint pushes ``n`` cheap callbacks (cycling through the three ways services push cleanup:
a sync callback, an async callback and an async context manager) so that what is measured is the
cost of the stack and its telemetry, not of the cleanup itself.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING

from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from exitstack_otel import DEFAULT_SCOPE_KEY, ExitStackMiddleware
from exitstack_otel.telemetry import CallbackSpans

if TYPE_CHECKING:
    from collections.abc import Sequence

    from opentelemetry.sdk.trace import ReadableSpan
    from starlette.types import ASGIApp, Receive, Scope, Send

CALLBACK_COUNTS = (0, 3, 10)


class CountingSpanExporter(SpanExporter):
    """Ends the pipeline after the batch processor: the export itself is not what is measured."""

    def __init__(self) -> None:
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.exported += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


class ContextlibStackMiddleware:
    """FastAPI's ``AsyncExitStackMiddleware`` design: a plain ``AsyncExitStack`` per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with AsyncExitStack() as stack:
            scope[DEFAULT_SCOPE_KEY] = stack
            await self.app(scope, receive, send)


def _sync_cleanup() -> None:
    pass


async def _async_cleanup() -> None:
    pass


class _Resource:
    async def __aenter__(self) -> _Resource:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        pass


async def _endpoint(request: Request) -> PlainTextResponse:
    stack: AsyncExitStack | None = request.scope.get(DEFAULT_SCOPE_KEY)
    if stack is not None:
        for i in range(request.path_params["n"]):
            which = i % 3
            if which == 0:
                stack.callback(_sync_cleanup)
            elif which == 1:
                stack.push_async_callback(_async_cleanup)
            else:
                await stack.enter_async_context(_Resource())
    return PlainTextResponse("ok")


def _starlette(middleware: list[Middleware]) -> Starlette:
    return Starlette(routes=[Route("/cb/{n:int}", _endpoint)], middleware=middleware)


@dataclass
class Sdk:
    tracer_provider: TracerProvider | None
    meter_provider: MeterProvider | None
    exporter: CountingSpanExporter | None = None
    reader: InMemoryMetricReader | None = None

    def flush(self) -> None:
        if self.tracer_provider is not None:
            self.tracer_provider.force_flush()

    def shutdown(self) -> None:
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()


def make_sdk(spans: bool, metrics: bool) -> Sdk:
    sdk = Sdk(None, None)
    if spans:
        sdk.exporter = CountingSpanExporter()
        sdk.tracer_provider = TracerProvider(sampler=ALWAYS_ON)
        sdk.tracer_provider.add_span_processor(BatchSpanProcessor(sdk.exporter))
    if metrics:
        sdk.reader = InMemoryMetricReader()
        sdk.meter_provider = MeterProvider(metric_readers=[sdk.reader])
    return sdk


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    build: Callable[[], tuple[ASGIApp, Sdk]]


def _bare() -> tuple[ASGIApp, Sdk]:
    return _starlette([]), make_sdk(spans=False, metrics=False)


def _contextlib() -> tuple[ASGIApp, Sdk]:
    return _starlette([Middleware(ContextlibStackMiddleware)]), make_sdk(spans=False, metrics=False)


def _ours(
    spans: bool, metrics: bool, callback_spans: CallbackSpans = "problems"
) -> Callable[[], tuple[ASGIApp, Sdk]]:
    def build() -> tuple[ASGIApp, Sdk]:
        # explicit providers: the global ones stay the API's no-ops, which "ours-nosdk" relies on
        sdk = make_sdk(spans, metrics)
        middleware = Middleware(
            ExitStackMiddleware,
            tracer_provider=sdk.tracer_provider,
            meter_provider=sdk.meter_provider,
            callback_spans=callback_spans,
        )
        return _starlette([middleware]), sdk

    return build


def _peer() -> tuple[ASGIApp, Sdk]:
    sdk = make_sdk(spans=True, metrics=True)
    app = OpenTelemetryMiddleware(
        _starlette([Middleware(ContextlibStackMiddleware)]),
        tracer_provider=sdk.tracer_provider,
        meter_provider=sdk.meter_provider,
    )
    return app, sdk


VARIANTS = (
    Variant("bare", "no stack middleware", _bare),
    Variant("contextlib", "plain contextlib middleware (FastAPI's design), the baseline", _contextlib),
    Variant("ours-nosdk", "ours, no SDK configured (API no-op providers)", _ours(False, False)),
    Variant("ours-metrics", "ours, metrics only", _ours(False, True)),
    Variant("ours-default", "ours, spans+metrics, callback spans for problems only", _ours(True, True)),
    Variant("ours-full", "ours, spans+metrics, a span per callback", _ours(True, True, "all")),
    Variant("peer-asgi", "opentelemetry-instrumentation-asgi around the contextlib middleware", _peer),
)
VARIANTS_BY_NAME = {variant.name: variant for variant in VARIANTS}
BASELINE = "contextlib"
PEER = "peer-asgi"
