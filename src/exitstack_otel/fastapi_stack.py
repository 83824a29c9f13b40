"""``FastAPIExitStack``: what FastAPI's ``AsyncExitStack()`` builds while ``exitstack_otel.fastapi`` is on.

Whether a stack records is decided when it is made: only while a request of an instrumented app
runs, which ``RequestMarker`` (around the app's middleware) says through a context variable.
Every other app in the process gets plain contextlib behaviour from the same class.

Most of FastAPI's stacks push nothing (a route with no upload and no ``yield`` dependency), so a
stack costs about what contextlib's does until something is pushed: its name and the push keys of
that name are looked up at its first push, its route and method when it unwinds what it reported.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import logging
from abc import ABCMeta
from collections import deque
from types import (
    AsyncGeneratorType,
    BuiltinFunctionType,
    CodeType,
    FunctionType,
    GeneratorType,
    MethodType,
)
from typing import TYPE_CHECKING, Any, cast

import anyio
from starlette.middleware.errors import ServerErrorMiddleware

from . import inflight
from .asgi import route_and_method
from .internals import FASTAPI_WRAPPERS, GENERATOR_MANAGER_CLASSES, SYNC_CALLBACK_CODE, current_context
from .naming import EXIT_NAMES
from .stack import InstrumentedAsyncExitStack
from .telemetry import NOTHING_KNOWN

if TYPE_CHECKING:
    from collections.abc import Callable, MutableMapping
    from types import TracebackType
    from typing import Self

    from starlette.types import ASGIApp, Receive, Scope, Send

    from .providers import TelemetrySource
    from .telemetry import CallbackInfo, Telemetry

logger = logging.getLogger(__name__)

# The scope keys FastAPI stores its stacks under; each becomes the stack's ``exitstack.stack.name``.
STACK_KEYS = ("fastapi_middleware_astack", "fastapi_inner_astack", "fastapi_function_astack")
UNRESOLVED_STACK_NAME = "fastapi"
# where FastAPI keeps the cancel scope of a request's async ``yield`` dependencies (0.165)
_CLEANUP_SCOPES_KEY = "fastapi_async_cleanup_scopes"

_RequestState = tuple["Telemetry", "MutableMapping[str, Any]", "list[FastAPIExitStack | None]"]
"""A request ``RequestMarker`` observes: its telemetry, its scope, and a one-item list holding the
stack made last for that scope whose key is not known yet (shared, as the scope is, with a FastAPI
app mounted in this one)."""

_current_request: contextvars.ContextVar[_RequestState | None] = contextvars.ContextVar(
    "exitstack_otel_fastapi_request", default=None
)


def _wrapper_codes() -> dict[str, CodeType]:
    """The code of FastAPI's wrapper generators (``internals.FASTAPI_WRAPPERS``), by function name.

    A wrapper found here is looked through at each push by its code's identity, decided now; one
    not found (renamed, moved) leaves its pushes to the stack's general path, which names them all
    the same, only slower."""
    codes: dict[str, CodeType] = {}
    for module_name, name in FASTAPI_WRAPPERS:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        # @asynccontextmanager keeps the generator function as __wrapped__
        generator_function = getattr(getattr(module, name, None), "__wrapped__", None)
        code = getattr(generator_function, "__code__", None)
        if isinstance(code, CodeType) and code.co_name == name:
            codes[name] = code
    return codes


_WRAPPER_CODES = _wrapper_codes()
_GENERATOR_MANAGERS = GENERATOR_MANAGER_CLASSES
_SYNC_CALLBACK_CODE = SYNC_CALLBACK_CODE
_CancelScope = anyio.CancelScope


class _AnyAsyncExitStackMeta(ABCMeta):
    # FastAPI asserts ``isinstance(stack, AsyncExitStack)`` against the patched name; a stack
    # someone else put in the scope (a plain one, or one made before we patched) must still pass.
    # FastAPI's own stacks are of this very class, which isinstance answers without asking here.
    def __instancecheck__(cls, instance: object) -> bool:
        return isinstance(instance, contextlib.AsyncExitStack)


class FastAPIExitStack(InstrumentedAsyncExitStack, metaclass=_AnyAsyncExitStackMeta):
    """What FastAPI builds as ``AsyncExitStack()`` while instrumented; plain outside our apps."""

    __slots__ = ("_report_all", "_scope", "_unready")

    def __init__(self) -> None:
        # InstrumentedAsyncExitStack.__init__'s work, minus what waits for the first push: every
        # slot it sets is set here (tests/test_fastapi_stack.py checks that none is missed)
        self._exit_callbacks = deque()
        self.route = self.method = self.running_callback = None
        self._name = UNRESOLVED_STACK_NAME
        self._reported = []
        self._known = NOTHING_KNOWN
        self._parent_context = None
        self._report_all = False
        request = _current_request.get()
        if request is None:
            self._telemetry = self._callback_timeout = self._scope = None
            self._unready = False
            return
        telemetry, scope, unnamed = request
        self._telemetry = telemetry
        self._callback_timeout = telemetry.options.callback_timeout
        if telemetry.tracer is not None:
            # the unwind span's parent: the span current where the stack was made (the request's)
            self._parent_context = current_context()
        self._scope = scope
        self._unready = True
        # FastAPI stores a stack in the scope right after making it, before it makes the next one
        # or pushes anything: the stack made before this one can be named now, by its key, before
        # a FastAPI app mounted inside this one stores its own stacks under the same keys.
        previous = unnamed[0]
        unnamed[0] = self
        if previous is not None and previous._name is UNRESOLVED_STACK_NAME:
            for key in STACK_KEYS:  # _key_of(), written out: a call fewer for each stack
                if previous is scope.get(key):
                    previous._name = key  # type: ignore[union-attr]  # "is" narrowed it to the scope's Any | None
                    break

    def _get_ready(self) -> None:
        """The first push of an observed request's stack: what its telemetry needs of its name."""
        self._unready = False
        if self._name is UNRESOLVED_STACK_NAME:
            self._name = _key_of(self, self._scope)  # type: ignore[arg-type]  # set with _unready
        telemetry: Telemetry = self._telemetry  # type: ignore[assignment]
        self._known = telemetry.known_pushes[self._name]
        self._report_all = telemetry.options.report_framework_callbacks

    def _push_exit_callback(self, callback: Callable[..., Any], is_sync: bool = True) -> None:
        scope = self._scope
        if scope is None:  # not a request of an instrumented app
            self._exit_callbacks.append((is_sync, callback))
            return
        if self._unready:
            self._get_ready()
        # FastAPI's own pushes, told apart by exact types and code decided once: its wrappers
        # around a ``yield`` dependency (named, by a fast key, after the dependency), and the
        # bookkeeping around them (not one of the app's cleanups: it runs as ever, unreported)
        kind = type(callback)
        if kind is MethodType:
            manager: Any = callback.__self__  # type: ignore[attr-defined]
            if type(manager) in _GENERATOR_MANAGERS:
                if manager.gen.__qualname__ in _WRAPPER_CODES and callback.__name__ in EXIT_NAMES:
                    key = _dependency_key(manager)
                    known = self._known[is_sync]
                    if key is not None and known is not None:
                        try:
                            info: CallbackInfo | None = known.get(key)
                        except Exception:  # a class that cannot be hashed: the general path
                            return InstrumentedAsyncExitStack._push_exit_callback(self, callback, is_sync)
                        self._exit_callbacks.append((is_sync, callback))
                        if info is None:
                            self._push_without_key(callback, is_sync, key, known)
                        else:
                            info.pushed.value += 1
                            self._reported.append((callback, info))
                        return
            elif isinstance(manager, _CancelScope) and not self._report_all:
                self._exit_callbacks.append((is_sync, callback))
                return
        elif kind is FunctionType and callback.__code__ is _SYNC_CALLBACK_CODE and not self._report_all:
            wrapped = callback.__wrapped__  # type: ignore[attr-defined]  # contextlib's callback()
            if (
                type(wrapped) is BuiltinFunctionType
                and wrapped.__self__ is scope.get(_CLEANUP_SCOPES_KEY)
                and wrapped.__name__ == "pop"
            ):
                self._exit_callbacks.append((is_sync, callback))
                return
        InstrumentedAsyncExitStack._push_exit_callback(self, callback, is_sync)

    def pop_all(self) -> Self:
        # type(self)() takes the request of wherever pop_all() is called; the moved callbacks
        # belong to this stack's
        new_stack = cast("Self", super().pop_all())
        new_stack._scope = self._scope
        new_stack._unready = self._unready
        new_stack._report_all = self._report_all
        return new_stack

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        if not self._exit_callbacks:
            return False  # as contextlib's loop, which would not run: nothing suppressed or raised
        if self._reported:  # the route is known once routing ran, and needed once reported
            self.route, self.method = route_and_method(self._scope)  # type: ignore[arg-type]
        return await InstrumentedAsyncExitStack.__aexit__(self, exc_type, exc, tb)


def _key_of(stack: FastAPIExitStack, scope: MutableMapping[str, Any]) -> str:
    for key in STACK_KEYS:
        if scope.get(key) is stack:
            return key
    return UNRESOLVED_STACK_NAME


def _dependency_key(manager: Any) -> object:
    """The fast push key of what FastAPI's wrapper ``manager`` holds: the dependency's own
    ``@contextmanager`` object in its ``cm`` argument (through nested wrappers), keyed as the stack
    keys a manager pushed directly: its generator's qualified name, or its class. None where the
    generator is not FastAPI's wrapper after all, or holds nothing."""
    for _ in range(4):
        gen = manager.gen
        gen_type = type(gen)
        if gen_type is AsyncGeneratorType:
            code, frame = gen.ag_code, gen.ag_frame
        elif gen_type is GeneratorType:
            code, frame = gen.gi_code, gen.gi_frame
        else:
            return None
        if frame is None or _WRAPPER_CODES.get(code.co_name) is not code:
            return None
        manager = frame.f_locals.get("cm")
        manager_type = type(manager)
        if manager_type not in _GENERATOR_MANAGERS:
            return None if manager is None else manager_type
        name = manager.gen.__qualname__
        if name not in _WRAPPER_CODES:
            return name
    return None


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
            self.telemetry_failed(exc)
            return None

    def telemetry_failed(self, exc: Exception) -> None:
        if not self._fault_logged:
            self._fault_logged = True
            logger.error("exitstack-otel could not get telemetry; FastAPI stacks stay plain", exc_info=exc)

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
        nested = outer is not None and outer[1] is scope
        if nested and instrumentation.class_wide:
            # the app's own instrument_fastapi() settings, applied outside, take precedence
            await self.app(scope, receive, send)
            return
        if instrumentation.exclude is not None and instrumentation.excludes(scope):
            # excluded by the app's FastAPI telemetry: not observed here, nor by an app outside
            token = _current_request.set(None)
            try:
                await self.app(scope, receive, send)
            finally:
                _current_request.reset(token)
            return
        try:
            telemetry = instrumentation.source.current()
        except Exception as exc:  # a broken provider: the request goes on, unobserved
            instrumentation.telemetry_failed(exc)
            telemetry = None
        if telemetry is None:  # no SDK configured: FastAPI's stacks stay plain contextlib
            await self.app(scope, receive, send)
            return
        # a FastAPI app mounted in this one shares the request's scope, and so its unnamed stack
        unnamed: list[FastAPIExitStack | None] = outer[2] if nested else [None]  # type: ignore[index]
        token = _current_request.set((telemetry, scope, unnamed))
        # in-flight hook (inflight.entered(), written out): wait_for_unwinds() waits for this request
        try:
            in_flight = inflight.threads.in_flight
        except AttributeError:  # the thread's first request
            in_flight = inflight.this_thread()
        in_flight.count += 1
        try:
            await self.app(scope, receive, send)
        finally:
            in_flight.count -= 1  # in-flight hook (InFlight.left(), written out)
            if in_flight.waiters and not in_flight.count:
                in_flight.wake_waiters()
            _current_request.reset(token)
