"""FastAPI's own request stacks, observed: ``instrument_fastapi(app)`` and ``uninstrument_fastapi(app)``.

FastAPI (0.121 and later) makes three ``AsyncExitStack`` objects per request and stores each in
the scope: ``fastapi_middleware_astack`` (closes uploaded files), ``fastapi_inner_astack``
(dependencies with ``yield``) and ``fastapi_function_astack`` (the same with ``scope="function"``).
It builds them from the name ``AsyncExitStack`` in ``fastapi.routing`` and
``fastapi.middleware.asyncexitstack``, and asserts ``isinstance`` against that name there and in
``fastapi.dependencies.utils``, so all three modules get ``FastAPIExitStack`` while anything here
is instrumented.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .fastapi_stack import STACK_KEYS, FastAPIExitStack, Instrumentation
from .options import TelemetryOptions
from .providers import TelemetrySource
from .settings import build_options

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import ModuleType

    from opentelemetry import metrics, trace
    from starlette.types import ASGIApp, Scope
    from typing_extensions import Unpack

    from .options import OptionFields

__all__ = ["STACK_KEYS", "FastAPIExitStack", "instrument_fastapi", "uninstrument_fastapi"]


# -- the stack class in FastAPI's modules, shared by every instrumented app ------------------------

_patch_lock = threading.Lock()
_patch_users = 0
_original_stacks: dict[str, Any] = {}


# The modules that create request stacks and check them with ``isinstance``: routing and the
# middleware make them; routing and the dependency solver check them (the solver twice per
# dependency, and against contextlib's class a stack of ours costs ABCMeta's Python-level check
# each time; against its own class, isinstance answers at once). A module that has no such name
# (older FastAPI) is left alone.
def _stack_modules() -> list[ModuleType]:
    import fastapi.dependencies.utils
    import fastapi.middleware.asyncexitstack
    import fastapi.routing

    modules = [fastapi.routing, fastapi.middleware.asyncexitstack, fastapi.dependencies.utils]
    return [module for module in modules if "AsyncExitStack" in vars(module)]


def acquire_stack_patch() -> None:
    global _patch_users
    with _patch_lock:
        if _patch_users == 0:
            for module in _stack_modules():
                _original_stacks[module.__name__] = module.AsyncExitStack
                module.AsyncExitStack = FastAPIExitStack  # type: ignore[attr-defined]
        _patch_users += 1


def release_stack_patch() -> None:
    global _patch_users
    with _patch_lock:
        if _patch_users == 0:
            return
        _patch_users -= 1
        if _patch_users > 0:
            return
        for module in _stack_modules():
            # leave alone whatever someone else has put there since
            if module.AsyncExitStack is FastAPIExitStack:
                module.AsyncExitStack = _original_stacks[module.__name__]  # type: ignore[attr-defined]
        _original_stacks.clear()


# -- FastAPI's own telemetry (0.165 and later: ``FastAPI(telemetry={...})``) ----------------------


@dataclass(frozen=True)
class FastAPITelemetry:
    """What an app gave FastAPI's own telemetry; all None when it gave nothing (or FastAPI has none)."""

    tracer_provider: trace.TracerProvider | None = None
    meter_provider: metrics.MeterProvider | None = None
    exclude: Callable[[Scope], bool] | None = None


def fastapi_telemetry(app: Any) -> FastAPITelemetry:
    """The providers and ``exclude`` hook of ``app``'s own telemetry settings.

    Our spans share FastAPI's tracer provider so that a span made during a cleanup, a child of our
    ``exitstack.unwind``, reaches the exporter that has its parent; with two providers it would be
    an orphan in FastAPI's. FastAPI keeps the merged settings in ``app._telemetry`` and offers no
    public accessor: anything else there (older FastAPI, a future change) means no settings.
    """
    config = getattr(app, "_telemetry", None)
    if not isinstance(config, Mapping):
        return FastAPITelemetry()
    exclude = config.get("exclude")
    return FastAPITelemetry(
        config.get("tracer_provider"), config.get("meter_provider"), exclude if callable(exclude) else None
    )


def _app_instrumentation(app: Any, source: TelemetrySource, *, class_wide: bool = False) -> Instrumentation:
    """``source`` for ``app``: its explicit providers first, then those of FastAPI's telemetry."""
    native = fastapi_telemetry(app)
    source = TelemetrySource(
        source.tracer_provider or native.tracer_provider,
        source.meter_provider or native.meter_provider,
        source.options,
    )
    return Instrumentation(source, class_wide=class_wide, exclude=native.exclude)


# -- one app ----------------------------------------------------------------------------------------

_APP_ATTRIBUTE = "_exitstack_otel_instrumentation"


class _AppBuild:
    """The app's ``build_middleware_stack`` while instrumented; wraps whatever was there before.

    An instance attribute, so that it composes with others who wrap the same method on the app
    (opentelemetry-instrumentation-fastapi's ``instrument_app``), before or after us.
    """

    def __init__(self, app: Any, instrumentation: Instrumentation) -> None:
        self.previous: Callable[[], ASGIApp] = app.build_middleware_stack
        self.previous_on_instance = "build_middleware_stack" in vars(app)
        self.instrumentation = instrumentation

    def __call__(self) -> ASGIApp:
        built = self.previous()
        if not self.instrumentation.active:
            return built
        return self.instrumentation.wrap(built)


def instrument_fastapi(
    app: Any,
    *,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
    options: TelemetryOptions | None = None,
    **option_fields: Unpack[OptionFields],
) -> None:
    """Report the cleanup of ``app``'s three request stacks: uploads closing, ``yield`` dependencies.

    Providers default to the global ones, read per request. Settings as for ``ExitStackMiddleware``:
    ``options`` and/or its fields as keyword arguments. ``uninstrument_fastapi(app)`` undoes it.
    """
    from fastapi.applications import FastAPI

    if not isinstance(app, FastAPI):
        raise TypeError(f"instrument_fastapi() needs a fastapi.FastAPI app, not {type(app).__qualname__}")
    if app_instrumentation(app) is not None:
        raise RuntimeError("this FastAPI app is already instrumented; call uninstrument_fastapi(app) first")
    resolved = build_options(options, **option_fields)
    instrumentation = _app_instrumentation(app, TelemetrySource(tracer_provider, meter_provider, resolved))
    acquire_stack_patch()
    setattr(app, _APP_ATTRIBUTE, instrumentation)
    app.build_middleware_stack = _AppBuild(app, instrumentation)  # type: ignore[method-assign]
    if app.middleware_stack is not None:
        # already serving: wrap what is built rather than rebuild the user's middleware
        app.middleware_stack = instrumentation.wrap(app.middleware_stack)


def uninstrument_fastapi(app: Any) -> None:
    """Undo ``instrument_fastapi(app)``; requests already running finish as they started."""
    instrumentation = app_instrumentation(app)
    if instrumentation is None:
        raise RuntimeError("this FastAPI app is not instrumented by instrument_fastapi()")
    instrumentation.active = False
    delattr(app, _APP_ATTRIBUTE)
    build = vars(app).get("build_middleware_stack")
    if isinstance(build, _AppBuild) and build.instrumentation is instrumentation:
        if build.previous_on_instance:
            app.build_middleware_stack = build.previous
        else:
            del app.build_middleware_stack
    # else someone wrapped it after us: our part stays, inactive, and passes everything through
    if app.middleware_stack is not None:
        app.middleware_stack = instrumentation.unwrap(app.middleware_stack)
    release_stack_patch()


def app_instrumentation(app: object) -> Instrumentation | None:
    found = getattr(app, _APP_ATTRIBUTE, None)
    return found if isinstance(found, Instrumentation) else None


# -- every app: the instrumentor's ------------------------------------------------------------------

_class_wide: Instrumentation | None = None
_original_build: Any = None
# one per app built while instrumented, with that app's FastAPI telemetry settings; turned off with
# _class_wide (the apps' built stacks hold them, and pass requests through once they are off)
_class_wide_apps: weakref.WeakSet[Instrumentation] = weakref.WeakSet()


def _build_middleware_stack(app: Any) -> ASGIApp:
    built: ASGIApp = _original_build(app)
    instrumentation = _class_wide
    if instrumentation is None or app_instrumentation(app) is not None:
        return built  # the app's own instrument_fastapi() wraps it
    if fastapi_telemetry(app) != FastAPITelemetry():
        instrumentation = _app_instrumentation(app, instrumentation.source, class_wide=True)
        _class_wide_apps.add(instrumentation)
    return instrumentation.wrap(built)


def instrument_all_apps(source: TelemetrySource) -> None:
    """Instrument every FastAPI app whose middleware is built from now on (``ExitStackInstrumentor``)."""
    from fastapi.applications import FastAPI

    global _class_wide, _original_build
    with _patch_lock:
        if _class_wide is not None:
            return
        _class_wide = Instrumentation(source, class_wide=True)
        _original_build = FastAPI.__dict__["build_middleware_stack"]
        FastAPI.build_middleware_stack = _build_middleware_stack  # type: ignore[method-assign,assignment]
    acquire_stack_patch()


def uninstrument_all_apps() -> None:
    from fastapi.applications import FastAPI

    global _class_wide, _original_build
    with _patch_lock:
        if _class_wide is None:
            return
        # stacks already built keep the marker, which now passes requests straight through
        _class_wide.active = False
        _class_wide = None
        for instrumentation in list(_class_wide_apps):
            instrumentation.active = False
        _class_wide_apps.clear()
        if FastAPI.__dict__.get("build_middleware_stack") is _build_middleware_stack:
            FastAPI.build_middleware_stack = _original_build  # type: ignore[method-assign]
        _original_build = None
    release_stack_patch()
