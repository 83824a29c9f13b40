"""Every private name of another library that exitstack-otel relies on, found here once, at import.

Each is looked up under a guard: where a release has renamed or dropped it, the value here is a
fallback built on public API (slower or less precise, never wrong), nothing is logged, and
``import exitstack_otel`` works. tests/test_internals.py runs every fallback.

=====================================================  ================  ==============================
what                                                   used by           fallback
=====================================================  ================  ==============================
contextlib: the code of the wrappers ``callback()``    naming            none needed: found through the
and ``push_async_callback()`` push, recognised by                        public push methods (below);
their code object                                                        if that fails, such pushes are
                                                                         named as plain exits
contextlib: ``_GeneratorContextManagerBase`` and its   naming            the classes found through the
``gen`` attribute (``@contextmanager`` objects are                       public decorators; no ``gen``:
named by their function)                                                 named by their class
fastapi.concurrency's wrapper generators and their     naming            no match: named by the wrapper
``cm`` local (a sync ``yield`` dependency is named by
what it wraps)
anyio: ``_backends._asyncio._task_states`` (does an    shield            always put the shield up
anyio scope enclose this asyncio task?), read through
its WeakKeyDictionary's ``data``                                         (``data``: its ``get()``)
asyncio: ``_get_running_loop`` (the loop, or None,     shield            ``get_running_loop()`` in a try
without raising under trio)
opentelemetry-api: ``trace._TRACER_PROVIDER``,         providers         the public getters, per request
``_PROXY_TRACER_PROVIDER``, ``metrics._internal``'s
``_METER_PROVIDER``, ``_PROXY_METER_PROVIDER``,
``_ProxyMeterProvider``
opentelemetry-api: ``context._RUNTIME_CONTEXT``'s     stack             ``context.get_current()``
``_current_context`` variable (the current context,
read per request without two Python calls)
opentelemetry-sdk: the histogram aggregation's         sdk_bridge        ``Histogram.record()`` per
internals (checked in full at setup, on a private                        value (said once in the log)
provider)                                                                (``sdk_bridge._load_sdk``)
=====================================================  ================  ==============================

Not listed: contextlib's ``_push_exit_callback`` and ``_exit_callbacks``, which
``InstrumentedAsyncExitStack`` overrides and sets itself. They are the contract the class is built on
(``_push_exit_callback`` is what every public push method calls on 3.11 to 3.15), checked by CPython's
own ``TestAsyncExitStack`` run on the class on each of them (tests/test_stack_cpython.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator, Callable, Iterator, Sized
from types import CodeType, ModuleType
from typing import Any
from weakref import ref as _weak_reference

# ---- contextlib --------------------------------------------------------------------------------


class _PushProbe(contextlib.AsyncExitStack):
    """Sees what the public push methods hand to ``_push_exit_callback``, and keeps nothing."""

    pushed: Callable[..., Any] | None = None

    def _push_exit_callback(self, callback: Callable[..., Any], is_sync: bool = True) -> None:
        self.pushed = callback


def _wrapper_code(push: Callable[[_PushProbe], object]) -> CodeType | None:
    probe = _PushProbe()
    try:
        push(probe)
    except Exception:  # pragma: no cover - a contextlib that no longer pushes this way
        return None
    code = getattr(probe.pushed, "__code__", None)
    return code if isinstance(code, CodeType) else None


def _nothing() -> None:
    pass


async def _nothing_async() -> None:
    pass


SYNC_CALLBACK_CODE: CodeType | None = _wrapper_code(lambda probe: probe.callback(_nothing))
"""The code of the closure ``callback()`` pushes; None where no closure is pushed."""
ASYNC_CALLBACK_CODE: CodeType | None = _wrapper_code(lambda probe: probe.push_async_callback(_nothing_async))


@contextlib.contextmanager
def _generator() -> Iterator[None]:
    yield


@contextlib.asynccontextmanager
async def _async_generator() -> AsyncIterator[None]:
    yield


def _generator_manager_types() -> tuple[type, ...]:
    made = (type(_generator()), type(_async_generator()))
    # their common private base also covers ``contextlib``'s own subclasses of it, if any appear
    base = getattr(contextlib, "_GeneratorContextManagerBase", None)
    return (base,) if isinstance(base, type) and all(issubclass(kind, base) for kind in made) else made


GENERATOR_MANAGER_TYPES: tuple[type, ...] = _generator_manager_types()
"""What ``@contextmanager`` and ``@asynccontextmanager`` make (``issubclass`` against it)."""

GENERATOR_MANAGER_CLASSES: frozenset[type] = frozenset({type(_generator()), type(_async_generator())})
"""The exact classes the two public decorators make (public API: nothing private to fall back from)."""

# ---- fastapi -----------------------------------------------------------------------------------

FASTAPI_WRAPPERS = frozenset(
    {
        ("fastapi.concurrency", "contextmanager_in_threadpool"),
        ("fastapi.concurrency", "_asynccontextmanager_with_shielded_exit"),
        ("fastapi.concurrency", "_contextmanager_with_concurrency_limit"),
    }
)
"""FastAPI runs sync dependencies, shielded exits and concurrency-limited dependencies through
these generator functions, ``(module, name)``; the user's own dependency is the context manager
each holds in its ``cm`` argument. Matched by name, never imported: where FastAPI renames one,
nothing matches and its pushes are named after the wrapper."""


# ---- anyio and asyncio -------------------------------------------------------------------------


def _anyio_task_states() -> Any:
    try:
        from anyio._backends._asyncio import _task_states
    except ImportError:
        return None
    return _task_states if callable(getattr(_task_states, "get", None)) else None


_TASK_STATES = _anyio_task_states()
# the WeakKeyDictionary's own dict, keyed by weak references: read with no Python call per request
_TASK_STATES_BY_REF: dict[Any, Any] | None = getattr(_TASK_STATES, "data", None)
if not isinstance(_TASK_STATES_BY_REF, dict):
    _TASK_STATES_BY_REF = None


def _anyio_scoped_tasks(by_ref: dict[Any, Any] | None) -> Sized:
    return by_ref if by_ref is not None else ("unknown",)


ANYIO_SCOPED_TASKS: Sized = _anyio_scoped_tasks(_TASK_STATES_BY_REF)
"""Empty while no asyncio task has entered an anyio cancel scope (anyio keeps a task's state only
from then on, and drops it with the task): then none can reach any task. Read per request as a
plain truth test; where anyio's dict is not found, a stand-in that is never empty, so that
``anyio_scope_encloses`` always decides."""


def anyio_scope_encloses(task: asyncio.Task[Any] | None) -> bool:
    """Whether an anyio cancel scope encloses ``task`` (True when it cannot be known)."""
    by_ref = _TASK_STATES_BY_REF
    if by_ref is not None and task is not None:
        state = by_ref.get(_weak_reference(task))
    elif _TASK_STATES is not None:
        state = _TASK_STATES.get(task)
    else:
        return True
    return state is not None and getattr(state, "cancel_scope", True) is not None


def _get_running_loop_public() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


running_loop: Callable[[], asyncio.AbstractEventLoop | None] = getattr(
    asyncio, "_get_running_loop", _get_running_loop_public
)
"""The running asyncio loop, None elsewhere (trio): without an exception where asyncio allows."""


# ---- opentelemetry-api -------------------------------------------------------------------------


def _current_context_getter() -> Callable[[], Any]:
    from opentelemetry import context
    from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext

    runtime = getattr(context, "_RUNTIME_CONTEXT", None)
    variable = getattr(runtime, "_current_context", None)
    if type(runtime) is ContextVarsRuntimeContext and isinstance(variable, contextvars.ContextVar):
        return variable.get  # what its get_current() returns, without its two Python calls
    return context.get_current


current_context: Callable[[], Any] = _current_context_getter()
"""``opentelemetry.context.get_current``; where the API's default runtime context is in use, the
``get`` of the context variable it keeps in ``context._RUNTIME_CONTEXT._current_context``."""


def _api_metrics_internal() -> ModuleType | None:
    try:
        from opentelemetry.metrics import _internal
    except ImportError:
        return None
    return _internal


def _api_globals() -> tuple[ModuleType, ModuleType] | None:
    from opentelemetry import trace

    metrics_internal = _api_metrics_internal()
    if metrics_internal is None:
        return None
    found = all(
        hasattr(module, name)
        for module, name in (
            (trace, "_TRACER_PROVIDER"),
            (trace, "_PROXY_TRACER_PROVIDER"),
            (metrics_internal, "_METER_PROVIDER"),
            (metrics_internal, "_PROXY_METER_PROVIDER"),
        )
    )
    return (trace, metrics_internal) if found else None


API_GLOBALS = _api_globals()
"""``(opentelemetry.trace, opentelemetry.metrics._internal)``, whose module globals hold the global
providers, or None where this API release keeps them elsewhere."""


def _proxy_meter_provider_type() -> type:
    from opentelemetry.metrics import NoOpMeterProvider

    metrics_internal = _api_metrics_internal()
    proxy = getattr(metrics_internal, "_ProxyMeterProvider", None)
    return proxy if isinstance(proxy, type) else NoOpMeterProvider


PROXY_METER_PROVIDER_TYPE: type = _proxy_meter_provider_type()
"""The type of the API's meter provider before one is set (a no-op that is no NoOpMeterProvider);
NoOpMeterProvider where that is gone (a provider not set yet is then looked up again per request)."""
