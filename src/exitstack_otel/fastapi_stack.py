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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from starlette.middleware.errors import ServerErrorMiddleware

from . import inflight
from .asgi import http_route, request_method
from .stack import InstrumentedAsyncExitStack

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from types import TracebackType

    from starlette.types import ASGIApp, Receive, Scope, Send

    from .providers import TelemetrySource
    from .telemetry import Telemetry

logger = logging.getLogger(__name__)

# The scope keys FastAPI stores its stacks under; each becomes the stack's ``exitstack.stack.name``.
STACK_KEYS = ("fastapi_middleware_astack", "fastapi_inner_astack", "fastapi_function_astack")
UNRESOLVED_STACK_NAME = "fastapi"


@dataclass(frozen=True)
class _Request:
    telemetry: Telemetry
    scope: Mapping[str, Any]
    unnamed: list[FastAPIExitStack] = field(default_factory=list)
    """Stacks made for this request whose scope key is not known yet."""


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
            super().__init__(UNRESOLVED_STACK_NAME, telemetry=None, callback_timeout=None)
            self._scope: Mapping[str, Any] | None = None
            return
        telemetry = request.telemetry
        super().__init__(UNRESOLVED_STACK_NAME, telemetry=telemetry)
        self._scope = request.scope
        self._report_all = telemetry.options.report_framework_callbacks
        # FastAPI stores a stack in the scope right after making it, before it makes the next one
        # or pushes anything: the stacks made before this one can be named now, by their key,
        # before a FastAPI app mounted inside this one stores its own stacks under the same keys.
        unnamed = request.unnamed
        while unnamed:
            unnamed.pop()._resolve_name()
        unnamed.append(self)
        self._unnamed = unnamed

    def _resolve_name(self) -> None:
        scope = self._scope
        if scope is None or self._name != UNRESOLVED_STACK_NAME:
            return
        for key in STACK_KEYS:
            if scope.get(key) is self:
                self._set_name(key)
                return

    def _push_exit_callback(self, callback: Callable[..., Any], is_sync: bool = True) -> None:
        if self._telemetry is None:
            super()._push_exit_callback(callback, is_sync)
            return
        if self._name == UNRESOLVED_STACK_NAME:
            self._resolve_name()
        if not self._report_all and _is_bookkeeping(callback, self._scope):
            # it runs as ever, it is just not one of the app's cleanups
            self._exit_callbacks.append((is_sync, callback))
            return
        super()._push_exit_callback(callback, is_sync)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        scope = self._scope
        if scope is not None:
            if self._name == UNRESOLVED_STACK_NAME:
                self._resolve_name()
            self.route, self.method = http_route(scope), request_method(scope)
        return await super().__aexit__(exc_type, exc, tb)


def _is_bookkeeping(callback: Callable[..., Any], scope: Mapping[str, Any] | None) -> bool:
    """FastAPI's own pushes around ``yield`` dependencies: the cancel scope that encloses their
    exits, and the ``dict.pop`` that forgets it (``fastapi.dependencies.utils._solve_generator``)."""
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, anyio.CancelScope):
        return True
    wrapped = getattr(callback, "__wrapped__", None)  # contextlib's wrapper of callback(f, ...)
    owner = getattr(wrapped, "__self__", None)
    return (
        owner is not None
        and scope is not None
        and owner is scope.get("fastapi_async_cleanup_scopes")
        and getattr(wrapped, "__name__", None) == "pop"
    )


class Instrumentation:
    """One ``instrument_fastapi`` call, or the instrumentor's instrumentation of every app."""

    def __init__(
        self,
        source: TelemetrySource,
        *,
        class_wide: bool = False,
        exclude: Callable[[Scope], bool] | None = None,
    ) -> None:
        self.source = source
        self.class_wide = class_wide
        self.exclude = exclude  # FastAPI's own telemetry's hook: what it leaves out, we leave out too
        self.active = True
        self._fault_logged = False
        self._exclude_fault_logged = False

    def excludes(self, scope: Scope) -> bool:
        exclude = self.exclude
        if exclude is None:
            return False
        try:
            return bool(exclude(scope))
        except Exception as exc:  # the app's hook: its failure is logged, the request observed
            if not self._exclude_fault_logged:
                self._exclude_fault_logged = True
                logger.error("exitstack-otel: the app's telemetry exclude hook failed", exc_info=exc)
            return False

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
        if instrumentation.excludes(scope):
            # excluded by the app's FastAPI telemetry: not observed here, nor by an app outside
            token = _current_request.set(None)
            try:
                await self.app(scope, receive, send)
            finally:
                _current_request.reset(token)
            return
        telemetry = instrumentation.telemetry()
        if telemetry is None:  # no SDK configured: FastAPI's stacks stay plain contextlib
            await self.app(scope, receive, send)
            return
        # a FastAPI app mounted in this one shares the request's scope, and so its unnamed stacks
        unnamed = outer.unnamed if outer is not None and outer.scope is scope else []
        token = _current_request.set(_Request(telemetry, scope, unnamed))
        in_flight = inflight.entered()  # in-flight hook: wait_for_unwinds() waits for this request
        try:
            await self.app(scope, receive, send)
        finally:
            in_flight.left()  # in-flight hook
            _current_request.reset(token)
