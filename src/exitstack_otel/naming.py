"""Stable, low-cardinality names and kinds for whatever reaches ``_push_exit_callback``.

A name describes code, never data: qualified names of functions, methods and classes only, so
no argument value, file name or path can leak into an attribute.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AsyncExitStack
from functools import partial
from types import FunctionType, MethodType, ModuleType
from typing import Any

from . import semconv

# contextlib wraps ``callback()`` and ``push_async_callback()`` targets in closures built by
# these two factories; their code objects identify such wrappers on every supported Python.
_SYNC_CB_CODE = AsyncExitStack._create_cb_wrapper(print).__code__  # type: ignore[attr-defined]  # private in typeshed
_ASYNC_CB_CODE = AsyncExitStack._create_async_cb_wrapper(print).__code__  # type: ignore[attr-defined]

# FastAPI runs sync dependencies, shielded exits and concurrency-limited dependencies through
# these generator-based wrappers; the user's own dependency is the context manager each wrapper
# holds in its ``cm`` argument.
_TRANSPARENT_WRAPPERS = frozenset(
    {
        ("fastapi.concurrency", "contextmanager_in_threadpool"),
        ("fastapi.concurrency", "_asynccontextmanager_with_shielded_exit"),
        ("fastapi.concurrency", "_contextmanager_with_concurrency_limit"),
    }
)


def classify(pushed: Callable[..., Any], is_sync: bool) -> tuple[str, object]:
    """Return the contract kind and the user's object (function or context manager) behind a push."""
    if type(pushed) is MethodType and pushed.__name__ in ("__exit__", "__aexit__"):
        return (semconv.KIND_CONTEXT if is_sync else semconv.KIND_ASYNC_CONTEXT), pushed.__self__
    code = getattr(pushed, "__code__", None)
    if code is _SYNC_CB_CODE:
        return semconv.KIND_CALLBACK, pushed.__wrapped__  # type: ignore[attr-defined]
    if code is _ASYNC_CB_CODE:
        return semconv.KIND_ASYNC_CALLBACK, pushed.__wrapped__  # type: ignore[attr-defined]
    return (semconv.KIND_EXIT if is_sync else semconv.KIND_ASYNC_EXIT), pushed


def callable_name(target: object) -> str:
    while isinstance(target, partial):
        target = target.func
    if isinstance(target, MethodType):
        return _qualname(target.__func__)
    self_obj = getattr(target, "__self__", None)
    if self_obj is not None and not isinstance(self_obj, (type, ModuleType)) and _is_builtin_method(target):
        # bound builtin methods such as a file's ``close``
        return f"{type(self_obj).__qualname__}.{getattr(target, '__name__', '?')}"
    qualname = getattr(target, "__qualname__", None)
    if isinstance(qualname, str):
        return qualname
    return type(target).__qualname__


def context_manager_name(cm: object) -> str:
    for _ in range(4):
        # @contextmanager / @asynccontextmanager objects drop ``func`` once entered, but keep
        # the generator, which carries the decorated function's name.
        gen = getattr(cm, "gen", None)
        code = getattr(gen, "gi_code", None) or getattr(gen, "ag_code", None)
        if code is None:
            break
        qualname = getattr(gen, "__qualname__", code.co_name)
        frame = getattr(gen, "gi_frame", None) or getattr(gen, "ag_frame", None)
        module = frame.f_globals.get("__name__") if frame is not None else None
        if (module, code.co_name) in _TRANSPARENT_WRAPPERS and frame is not None and "cm" in frame.f_locals:
            cm = frame.f_locals["cm"]
            continue
        return str(qualname)
    return type(cm).__qualname__


def default_name(kind: str, target: object) -> str:
    if kind in (semconv.KIND_CONTEXT, semconv.KIND_ASYNC_CONTEXT):
        return context_manager_name(target)
    return callable_name(target)


def _qualname(func: object) -> str:
    qualname = getattr(func, "__qualname__", None)
    return qualname if isinstance(qualname, str) else type(func).__qualname__


def _is_builtin_method(target: object) -> bool:
    return type(target).__name__ in ("builtin_function_or_method", "method-wrapper")


# FastAPI's generator wrappers name what they wrap, which differs from one push to the next
_WRAPPER_CODE_NAMES = frozenset(name for _, name in _TRANSPARENT_WRAPPERS)


def identity(pushed: Callable[..., Any], is_sync: bool, stack_name: str) -> tuple[object, ...] | None:
    """A key that stands for the stack, kind and default name of ``pushed``, found without naming
    it: the code behind it. None where no key is cheap and certain (builtins, objects, wrappers)."""
    code = getattr(pushed, "__code__", None)
    if code is _SYNC_CB_CODE or code is _ASYNC_CB_CODE:
        target: Any = getattr(pushed, "__wrapped__", None)
        kind = type(target)
        if kind is FunctionType:
            return stack_name, code, target.__code__
        if kind is MethodType:
            return stack_name, code, target.__func__
        return None
    kind = type(pushed)
    if kind is FunctionType:
        return stack_name, is_sync, code
    if kind is MethodType and pushed.__name__ in ("__exit__", "__aexit__"):
        manager = pushed.__self__  # type: ignore[attr-defined]
        gen = getattr(manager, "gen", None)
        if gen is None:
            return stack_name, is_sync, type(manager)
        gen_code = getattr(gen, "gi_code", None) or getattr(gen, "ag_code", None)
        if gen_code is None or gen_code.co_name in _WRAPPER_CODE_NAMES:
            return None
        return stack_name, is_sync, gen_code
    return None
