"""``FastAPIExitStack``: what FastAPI's ``AsyncExitStack()`` builds while ``exitstack_otel.fastapi`` is on.

Whether a stack records is decided when it is made: only while a request of an instrumented app
runs, which ``RequestMarker`` (around the app's middleware) says through a context variable.
Every other app in the process gets plain contextlib behaviour from the same class.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from abc import ABCMeta
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.middleware.errors import ServerErrorMiddleware

from . import inflight
from .stack import InstrumentedAsyncExitStack

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from types import TracebackType

    from starlette.types import ASGIApp, Receive, Scope, Send

    from .providers import TelemetrySource
    from .telemetry import Telemetry

logger = logging.getLogger("exitstack_otel")

# The scope keys FastAPI stores its stacks under; each becomes the stack's ``exitstack.stack.name``.
STACK_KEYS = ("fastapi_middleware_astack", "fastapi_inner_astack", "fastapi_function_astack")
UNRESOLVED_STACK_NAME = "fastapi"


@dataclass(frozen=True)
class _Request:
    telemetry: Telemetry
    scope: Mapping[str, Any]


_current_request: contextvars.ContextVar[_Request | None] = contextvars.ContextVar(
    "exitstack_otel_fastapi_request", default=None
)


class _AnyAsyncExitStackMeta(ABCMeta):
    # FastAPI asserts ``isinstance(stack, AsyncExitStack)`` against the patched name; a stack
    # someone else put in the scope (a plain one, or one made before we patched) must still pass.
    def __instancecheck__(cls, instance: object) -> bool:
        return isinstance(instance, contextlib.AsyncExitStack)


class FastAPIExitStack(InstrumentedAsyncExitStack, metaclass=_AnyAsyncExitStackMeta):
    """What FastAPI builds as ``AsyncExitStack()`` while instrumented; plain outside our apps."""

    def __init__(self) -> None:
        request = _current_request.get()
        if request is None:
            super().__init__(UNRESOLVED_STACK_NAME, telemetry=None)
            self._unresolved = False
            return
        super().__init__(UNRESOLVED_STACK_NAME, telemetry=request.telemetry, scope=request.scope)
        # FastAPI stores the stack in the scope only after making it: the key is looked up later
        self._unresolved = True

    def _resolve_name(self) -> None:
        self._unresolved = False
        scope = self._scope
        if scope is None:
            return
        for key in STACK_KEYS:
            if scope.get(key) is self:
                self._name = key
                return

    def _push_exit_callback(self, callback: Callable[..., Any], is_sync: bool = True) -> None:
        if self._unresolved:
            self._resolve_name()
        super()._push_exit_callback(callback, is_sync)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        if self._unresolved:
            self._resolve_name()
        return await super().__aexit__(exc_type, exc, tb)


class Instrumentation:
    """One ``instrument_fastapi`` call, or the instrumentor's instrumentation of every app."""

    def __init__(self, source: TelemetrySource, *, class_wide: bool = False) -> None:
        self.source = source
        self.class_wide = class_wide
        self.active = True
        self._fault_logged = False

    def telemetry(self) -> Telemetry | None:
        try:
            return self.source.current()
        except Exception as exc:  # a broken provider: the request goes on, unobserved
            if not self._fault_logged:
                self._fault_logged = True
                logger.error(
                    "exitstack-otel could not get telemetry; FastAPI stacks stay plain", exc_info=exc
                )
            return None

    def wrap(self, middleware_stack: ASGIApp) -> ASGIApp:
        # Inside the outermost ServerErrorMiddleware, keeping it outermost: other instrumentation
        # (opentelemetry-instrumentation-fastapi) rebuilds the stack around it and gives up otherwise.
        if isinstance(middleware_stack, ServerErrorMiddleware):
            middleware_stack.app = RequestMarker(middleware_stack.app, self)
            return middleware_stack
        return RequestMarker(middleware_stack, self)

    def unwrap(self, middleware_stack: ASGIApp) -> ASGIApp:
        if isinstance(middleware_stack, ServerErrorMiddleware):
            inner = middleware_stack.app
            if isinstance(inner, RequestMarker) and inner.instrumentation is self:
                middleware_stack.app = inner.app
            return middleware_stack
        if isinstance(middleware_stack, RequestMarker) and middleware_stack.instrumentation is self:
            return middleware_stack.app
        return middleware_stack


class RequestMarker:
    """Pure-ASGI wrapper inside an app's built middleware stack: marks its requests as observed."""

    def __init__(self, app: ASGIApp, instrumentation: Instrumentation) -> None:
        self.app = app
        self.instrumentation = instrumentation

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        instrumentation = self.instrumentation
        if not instrumentation.active or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        outer = _current_request.get()
        if instrumentation.class_wide and outer is not None and outer.scope is scope:
            # the app's own instrument_fastapi() settings, applied outside, take precedence
            await self.app(scope, receive, send)
            return
        telemetry = instrumentation.telemetry()
        if telemetry is None:  # no SDK configured: FastAPI's stacks stay plain contextlib
            await self.app(scope, receive, send)
            return
        token = _current_request.set(_Request(telemetry, scope))
        in_flight = inflight.entered()  # in-flight hook: wait_for_unwinds() waits for this request
        try:
            await self.app(scope, receive, send)
        finally:
            in_flight.left()  # in-flight hook
            _current_request.reset(token)
