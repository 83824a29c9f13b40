"""``ExitStackMiddleware``: one instrumented exit stack per HTTP request and websocket session."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry import metrics, trace
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from . import inflight
from .providers import TelemetrySource
from .shield import unwind
from .stack import InstrumentedAsyncExitStack, checked_callback_timeout
from .telemetry import CallbackNamer, CallbackSpans, TelemetryOptions

# FastAPI's routing reads this key to close uploaded files, so a FastAPI router mounted in a plain
# Starlette app works behind this middleware unchanged.
DEFAULT_SCOPE_KEY = "fastapi_middleware_astack"


class ExitStackMiddleware:
    """Opens an ``InstrumentedAsyncExitStack`` at ``scope[scope_key]`` and unwinds it afterwards.

    Make it the innermost middleware (last in ``middleware=[...]``), as FastAPI does with its own
    stack: context variables set by the endpoint are then visible to the callbacks, and the unwind
    runs after the response has been sent in full (after the last chunk of a streaming response,
    after a websocket closes).
    The unwind is shielded from cancellation so that a disconnect or a shutdown cannot skip a
    cleanup; the cancellation propagates once every callback has run.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        scope_key: str = DEFAULT_SCOPE_KEY,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        callback_namer: CallbackNamer | None = None,
        callback_spans: CallbackSpans = "problems",
        slow_callback_threshold: float = 0.1,
        max_callback_names: int = 200,
        callback_timeout: float | None = None,
    ) -> None:
        self.app = app
        self.scope_key = scope_key
        self.callback_timeout = checked_callback_timeout(callback_timeout)
        self.telemetry = TelemetrySource(
            tracer_provider,
            meter_provider,
            TelemetryOptions(
                callback_spans=callback_spans,
                slow_callback_threshold=slow_callback_threshold,
                max_callback_names=max_callback_names,
                callback_namer=callback_namer,
            ),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return

        stack = InstrumentedAsyncExitStack(
            self.scope_key,
            telemetry=self.telemetry.current(),
            scope=scope,
            callback_timeout=self.callback_timeout,
        )
        scope[self.scope_key] = stack
        in_flight = inflight.entered()  # in-flight hook: wait_for_unwinds() waits for this request
        try:
            await self.app(scope, receive, send)
        except BaseException as exc:
            if not await unwind(stack, type(exc), exc, exc.__traceback__):
                raise
        else:
            await unwind(stack, None, None, None)
        finally:  # in-flight hook
            in_flight.left()


def get_exit_stack(
    request_or_scope: HTTPConnection | Mapping[str, Any],
    scope_key: str = DEFAULT_SCOPE_KEY,
) -> InstrumentedAsyncExitStack:
    """The request's stack; push cleanup onto it to have it run after the response is sent."""
    scope = request_or_scope.scope if isinstance(request_or_scope, HTTPConnection) else request_or_scope
    stack = scope.get(scope_key)
    if not isinstance(stack, InstrumentedAsyncExitStack):
        found = "nothing" if stack is None else f"a {type(stack).__qualname__}"
        raise RuntimeError(
            f"No InstrumentedAsyncExitStack at scope[{scope_key!r}] (found {found}). "
            "Add exitstack_otel.ExitStackMiddleware to the application as its innermost middleware "
            "(last in middleware=[...], or the first app.add_middleware call) "
            f"with scope_key={scope_key!r}."
        )
    return stack
