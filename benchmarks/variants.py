"""The applications compared: the same Starlette endpoint behind each stack middleware.

The endpoint pushes ``n`` cheap callbacks (cycling through the three ways services push cleanup:
a sync callback, an async callback and an async context manager) so that what is measured is the
cost of the stack and its telemetry, not of the cleanup itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
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
from exitstack_otel.fastapi import instrument_fastapi, uninstrument_fastapi
from exitstack_otel.telemetry import CallbackSpans

from .fastapi_app import build_app
from .shapes import GET_CALLBACKS, GET_FAILING, POST_ITEM, CleanupFailed, RequestShape

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


def _failing_cleanup() -> None:
    raise CleanupFailed("the database went away")


def _endpoint_pushing(
    sync_cleanup: Callable[[], None],
) -> Callable[[Request], Coroutine[None, None, PlainTextResponse]]:
    async def endpoint(request: Request) -> PlainTextResponse:
        stack: AsyncExitStack | None = request.scope.get(DEFAULT_SCOPE_KEY)
        if stack is not None:
            for i in range(request.path_params["n"]):
                which = i % 3
                if which == 0:
                    stack.callback(sync_cleanup)
                elif which == 1:
                    stack.push_async_callback(_async_cleanup)
                else:
                    await stack.enter_async_context(_Resource())
        return PlainTextResponse("ok")

    return endpoint


def _starlette(middleware: list[Middleware]) -> Starlette:
    routes = [
        Route("/cb/{n:int}", _endpoint_pushing(_sync_cleanup)),
        # the first cleanup pushed, the last to run: every other cleanup has run when it raises
        Route("/fail/{n:int}", _endpoint_pushing(_failing_cleanup)),
    ]
    return Starlette(routes=routes, middleware=middleware)


@dataclass
class Sdk:
    tracer_provider: TracerProvider | None
    meter_provider: MeterProvider | None
    exporter: CountingSpanExporter | None = None
    reader: InMemoryMetricReader | None = None
    undo: list[Callable[[], None]] = field(default_factory=list)
    """run after the providers shut down: what a variant changed outside its app (FastAPI's
    modules, the library's logger) is put back"""

    def flush(self) -> None:
        if self.tracer_provider is not None:
            self.tracer_provider.force_flush()

    def shutdown(self) -> None:
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()
        while self.undo:
            self.undo.pop()()


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
    shape: RequestShape = GET_CALLBACKS


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


class _CountingHandler(logging.Handler):
    """Where the failure storm's log records end, as spans end in ``CountingSpanExporter``: the
    records are made (at most 20 a minute, the library's rate limit), not written anywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.handled = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.handled += 1


def _failing(build: Callable[[], tuple[ASGIApp, Sdk]]) -> Callable[[], tuple[ASGIApp, Sdk]]:
    def failing_build() -> tuple[ASGIApp, Sdk]:
        app, sdk = build()
        library_log = logging.getLogger("exitstack_otel")
        handler = _CountingHandler()
        library_log.addHandler(handler)
        sdk.undo.append(lambda: library_log.removeHandler(handler))
        return app, sdk

    return failing_build


def _fastapi(instrumented: bool) -> Callable[[], tuple[ASGIApp, Sdk]]:
    def build() -> tuple[ASGIApp, Sdk]:
        app = build_app()
        sdk = make_sdk(spans=instrumented, metrics=instrumented)
        if instrumented:
            instrument_fastapi(
                app,
                tracer_provider=sdk.tracer_provider,
                meter_provider=sdk.meter_provider,
                callback_spans="problems",
            )
            sdk.undo.append(lambda: uninstrument_fastapi(app))
        return app, sdk

    return build


VARIANTS = (
    Variant("bare", "no stack middleware", _bare),
    Variant("contextlib", "plain contextlib middleware (FastAPI's design), the baseline", _contextlib),
    Variant("ours-nosdk", "ours, no SDK configured (API no-op providers)", _ours(False, False)),
    Variant("ours-metrics", "ours, metrics only", _ours(False, True)),
    Variant("ours-default", "ours, spans+metrics, callback spans for problems only", _ours(True, True)),
    Variant("ours-full", "ours, spans+metrics, a span per callback", _ours(True, True, "all")),
    Variant("peer-asgi", "opentelemetry-instrumentation-asgi around the contextlib middleware", _peer),
)
BASELINE = "contextlib"
PEER = "peer-asgi"


@dataclass(frozen=True)
class Group:
    """Variants measured together against the first of them, the group's baseline."""

    title: str
    variants: tuple[Variant, ...]
    callbacks: int
    isolated: bool = False
    """measured in process one variant per fresh process: ``instrument_fastapi`` patches FastAPI's
    modules for the whole process, and the plain app must not run with that patch"""

    @property
    def baseline(self) -> str:
        return self.variants[0].name

    @property
    def names(self) -> list[str]:
        return [variant.name for variant in self.variants]


STORM = Group(
    "failure storm: the first of 3 cleanups raises on every request",
    (
        Variant("storm-contextlib", "contextlib, one cleanup failing", _failing(_contextlib), GET_FAILING),
        Variant(
            "storm-ours-default",
            "ours default, one cleanup failing",
            _failing(_ours(True, True)),
            GET_FAILING,
        ),
    ),
    callbacks=3,
)
FASTAPI = Group(
    "FastAPI: JSON POST, two yield dependencies (sync and async)",
    (
        Variant("fastapi-plain", "the FastAPI app, uninstrumented", _fastapi(False), POST_ITEM),
        Variant(
            "fastapi-ours-default", "the same app, instrument_fastapi default", _fastapi(True), POST_ITEM
        ),
    ),
    callbacks=2,  # the two dependencies; the request does not depend on it
    isolated=True,
)
VARIANTS_BY_NAME = {variant.name: variant for variant in (*VARIANTS, *STORM.variants, *FASTAPI.variants)}
