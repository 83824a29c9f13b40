"""``ExitStackMiddleware``: one instrumented exit stack per HTTP request and websocket session."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics, trace
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from . import inflight
from .asgi import route_and_method
from .inflight import threads
from .internals import ANYIO_SCOPED_TASKS, running_loop
from .options import TelemetryOptions
from .providers import TelemetrySource
from .settings import build_options
from .shield import request_scope
from .stack import InstrumentedAsyncExitStack

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .options import OptionFields

# FastAPI's routing reads this key to close uploaded files, so a FastAPI router mounted in a plain
# Starlette app works behind this middleware unchanged.
DEFAULT_SCOPE_KEY = "fastapi_middleware_astack"
# ... but the stack is ours, not FastAPI's, and says so in exitstack.stack.name
DEFAULT_STACK_NAME = "exitstack_middleware"


class ExitStackMiddleware:
    """Opens an ``InstrumentedAsyncExitStack`` at ``scope[scope_key]`` and unwinds it afterwards.

    Make it the innermost middleware (last in ``middleware=[...]``), as FastAPI does with its own
    stack: context variables set by the endpoint are then visible to the callbacks, and the unwind
    runs after the response has been sent in full (after the last chunk of a streaming response,
    after a websocket closes).
    The callbacks run in the request's own task, as contextlib runs them. The unwind is shielded
    from cancel scopes (a client hanging up, a task group failing), whose cancellation propagates
    once every callback has run; a native ``Task.cancel()`` interrupts the callback running at that
    moment, and the rest still run (``exitstack_otel.shield``).

    Settings: ``options`` (a ``TelemetryOptions``) and/or its fields as keyword arguments, which
    win. ``stack_name`` defaults to ``exitstack_middleware`` for the default scope key and to the
    scope key otherwise.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        scope_key: str = DEFAULT_SCOPE_KEY,
        stack_name: str | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        options: TelemetryOptions | None = None,
        **option_fields: Unpack[OptionFields],
    ) -> None:
        self.app = app
        self.scope_key = scope_key
        if stack_name is None:
            stack_name = DEFAULT_STACK_NAME if scope_key == DEFAULT_SCOPE_KEY else scope_key
        self.stack_name = stack_name
        resolved = build_options(options, **option_fields)
        self.callback_timeout = resolved.callback_timeout
        self.telemetry = TelemetrySource(tracer_provider, meter_provider, resolved)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return

        telemetry = self.telemetry.current()
        stack = InstrumentedAsyncExitStack(
            self.stack_name, telemetry=telemetry, callback_timeout=self.callback_timeout
        )
        scope[self.scope_key] = stack
        # None where no cancel scope can reach this request: at once on asyncio while no task has
        # entered an anyio scope (most requests of a plain uvicorn server), else as shield decides
        cancel_scope = None if running_loop() is not None and not ANYIO_SCOPED_TASKS else request_scope()
        if cancel_scope is not None:
            # a ``with`` block's enter and exit, written out: most requests (a plain uvicorn task)
            # have no scope, and pay nothing for one; ours is never cancelled, and swallows nothing
            cancel_scope.__enter__()
        # in-flight hook (inflight.entered(), written out): wait_for_unwinds() waits for this request
        try:
            in_flight = threads.in_flight
        except AttributeError:  # the thread's first request
            in_flight = inflight.this_thread()
        in_flight.count += 1
        # as ``async with stack:`` runs it: the unwind in this task, inside the except clause that
        # caught the endpoint's exception (what a cleanup raises chains to it)
        try:
            await self.app(scope, receive, send)
        except BaseException as exc:
            if cancel_scope is not None:  # cancel scopes around the request wait for the unwind
                cancel_scope.shield = True
            if stack._reported:  # the route is known once routing ran, and needed once reported
                stack.route, stack.method = route_and_method(scope)
            if not await stack.__aexit__(type(exc), exc, exc.__traceback__):
                raise
        else:
            if cancel_scope is not None:
                cancel_scope.shield = True
            if stack._reported:
                stack.route, stack.method = route_and_method(scope)
            await stack.__aexit__(None, None, None)
        finally:
            in_flight.count -= 1  # in-flight hook (InFlight.left(), written out)
            if in_flight.waiters and not in_flight.count:
                in_flight.wake_waiters()
            if cancel_scope is not None:
                cancel_scope.__exit__(None, None, None)


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
