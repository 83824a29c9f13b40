"""Stable, low-cardinality names and kinds for whatever reaches ``_push_exit_callback``.

A name describes code, never data: qualified names of functions, methods and classes only, so
no argument value, file name or path can leak into an attribute. What an object is comes from its
exact type, never from attributes read through it, which a proxy's ``__getattr__`` would supply.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from types import (
    AsyncGeneratorType,
    BuiltinFunctionType,
    FunctionType,
    GeneratorType,
    MethodDescriptorType,
    MethodType,
    MethodWrapperType,
    ModuleType,
    WrapperDescriptorType,
)
from typing import Any

from . import semconv
from .internals import ASYNC_CALLBACK_CODE, FASTAPI_WRAPPERS, GENERATOR_MANAGER_TYPES, SYNC_CALLBACK_CODE

# contextlib wraps ``callback()`` and ``push_async_callback()`` targets in closures; their code
# objects identify such wrappers on every supported Python (``internals`` says how they are found)
_SYNC_CB_CODE = SYNC_CALLBACK_CODE
_ASYNC_CB_CODE = ASYNC_CALLBACK_CODE
EXIT_NAMES = frozenset({"__exit__", "__aexit__"})
"""The names of the exit methods contextlib pushes for a context manager."""
_EXIT_NAMES = EXIT_NAMES

# Objects whose ``__qualname__`` is code's: functions (async ones too, lambdas) and builtins;
# classes are added by ``issubclass(type(target), type)``.
_NAMED_TYPES = frozenset(
    {FunctionType, BuiltinFunctionType, MethodWrapperType, WrapperDescriptorType, MethodDescriptorType}
)
_BUILTIN_METHOD_TYPES = frozenset({BuiltinFunctionType, MethodWrapperType})

# FastAPI's generator-based wrappers around a dependency, known by (module, function name)
_TRANSPARENT_WRAPPERS = FASTAPI_WRAPPERS


def classify(pushed: Callable[..., Any], is_sync: bool) -> tuple[str, object]:
    """Return the contract kind and the user's object (function or context manager) behind a push."""
    manager = exit_method_owner(pushed)
    if manager is not None:
        return (semconv.KIND_CONTEXT if is_sync else semconv.KIND_ASYNC_CONTEXT), manager
    code = getattr(pushed, "__code__", None)
    if code is not None and code is _SYNC_CB_CODE:
        return semconv.KIND_CALLBACK, pushed.__wrapped__  # type: ignore[attr-defined]
    if code is not None and code is _ASYNC_CB_CODE:
        return semconv.KIND_ASYNC_CALLBACK, pushed.__wrapped__  # type: ignore[attr-defined]
    return (semconv.KIND_EXIT if is_sync else semconv.KIND_ASYNC_EXIT), pushed


def exit_method_owner(pushed: Any) -> Any:
    """The context manager whose ``__exit__``/``__aexit__`` was pushed, else None.

    A manager written in Python arrives as a bound method on every supported Python. One written
    in C (a lock, a file) arrives so up to 3.14, where contextlib binds the method itself; from 3.15
    on contextlib pushes what it looks up on the type, a builtin method bound to the manager."""
    kind = type(pushed)
    if kind is MethodType:
        if pushed.__name__ in _EXIT_NAMES:
            return pushed.__self__
    elif kind is BuiltinFunctionType and pushed.__name__ in _EXIT_NAMES:
        owner = pushed.__self__
        if owner is not None and not isinstance(owner, (type, ModuleType)):
            return owner
    return None


def callable_name(target: object) -> str:
    kind = type(target)
    # partials and bound methods, each made around an existing callable: the chain ends
    while kind is partial or kind is MethodType:
        target = target.func if kind is partial else target.__func__  # type: ignore[attr-defined]
        kind = type(target)
    if kind is FunctionType:  # the common case first
        return target.__qualname__  # type: ignore[attr-defined,no-any-return]  # always a str
    if kind in _BUILTIN_METHOD_TYPES:
        self_obj = target.__self__  # type: ignore[attr-defined]  # every builtin has one
        if self_obj is not None and not isinstance(self_obj, (type, ModuleType)):
            # a bound builtin method such as a file's ``close``: its class's name, not the instance's
            return f"{type(self_obj).__qualname__}.{target.__name__}"  # type: ignore[attr-defined]
    return _code_name(target)


def context_manager_name(cm: object) -> str:
    for _ in range(4):
        # @contextmanager / @asynccontextmanager objects drop ``func`` once entered, but keep
        # the generator, which carries the decorated function's name.
        if not issubclass(type(cm), GENERATOR_MANAGER_TYPES):
            break
        gen: Any = getattr(cm, "gen", None)
        if type(gen) is GeneratorType:
            code, frame = gen.gi_code, gen.gi_frame
        elif type(gen) is AsyncGeneratorType:
            code, frame = gen.ag_code, gen.ag_frame
        else:
            break
        module = frame.f_globals.get("__name__") if frame is not None else None
        if (module, code.co_name) in _TRANSPARENT_WRAPPERS and frame is not None and "cm" in frame.f_locals:
            cm = frame.f_locals["cm"]
            continue
        return str(gen.__qualname__)
    return type(cm).__qualname__


def default_name(kind: str, target: object) -> str:
    if kind in (semconv.KIND_CONTEXT, semconv.KIND_ASYNC_CONTEXT):
        return context_manager_name(target)
    return callable_name(target)


def _code_name(target: object) -> str:
    """The qualified name of a function or class; any other object is named by its type.

    The exact type decides, never an attribute read through the object: a proxy's ``__getattr__``
    (or ``__class__``) would answer with whatever it delegates to, data included.
    """
    kind = type(target)
    if kind in _NAMED_TYPES or issubclass(kind, type):
        qualname = target.__qualname__  # type: ignore[attr-defined]  # all of these have one
        if isinstance(qualname, str):
            return qualname
    return kind.__qualname__


# FastAPI's generator wrappers name what they wrap, which differs from one push to the next
WRAPPER_CODE_NAMES = frozenset(name for _, name in _TRANSPARENT_WRAPPERS)
"""The function names of FastAPI's wrapper generators (a quick first test before the module's)."""
_WRAPPER_CODE_NAMES = WRAPPER_CODE_NAMES


def identity(pushed: Callable[..., Any], is_sync: bool, stack_name: str) -> tuple[object, ...] | None:
    """A key that stands for the stack, kind and default name of ``pushed``, found without naming
    it: the function's qualified name, or the manager's class, decided by exact types as the
    names are, and through FastAPI's wrappers to the manager each holds. None where no key is
    cheap and certain (builtins, partials, other objects). Only strs and classes: a code object
    in a key would be hashed anew at every lookup (code objects cache no hash)."""
    kind = type(pushed)
    if kind is FunctionType:
        code = pushed.__code__
        if code is not None and (code is _SYNC_CB_CODE or code is _ASYNC_CB_CODE):
            wrapper = semconv.KIND_CALLBACK if code is _SYNC_CB_CODE else semconv.KIND_ASYNC_CALLBACK
            target: Any = getattr(pushed, "__wrapped__", None)
            if type(target) is MethodType:
                target = target.__func__
            if type(target) is FunctionType:
                return stack_name, wrapper, target.__qualname__
            return None
        return stack_name, semconv.KIND_EXIT if is_sync else semconv.KIND_ASYNC_EXIT, pushed.__qualname__
    # a manager's exit: a bound method (inline, the usual case), or a builtin one (3.15, a C manager)
    manager: Any = None
    if kind is MethodType:
        if pushed.__name__ in _EXIT_NAMES:
            manager = pushed.__self__  # type: ignore[attr-defined]
    elif kind is BuiltinFunctionType:
        manager = exit_method_owner(pushed)
    if manager is not None:
        manager_kind = semconv.KIND_CONTEXT if is_sync else semconv.KIND_ASYNC_CONTEXT
        for _ in range(4):  # as context_manager_name looks through FastAPI's wrappers
            manager_type = type(manager)
            if not issubclass(manager_type, GENERATOR_MANAGER_TYPES):
                return stack_name, manager_kind, manager_type
            gen: Any = getattr(manager, "gen", None)
            gen_type = type(gen)
            if gen_type is GeneratorType:
                gen_code, frame = gen.gi_code, gen.gi_frame
            elif gen_type is AsyncGeneratorType:
                gen_code, frame = gen.ag_code, gen.ag_frame
            else:
                return None
            if gen_code.co_name not in _WRAPPER_CODE_NAMES:
                return stack_name, manager_kind, gen.__qualname__
            # a FastAPI wrapper (every sync dependency that yields): the key of what it holds
            if frame is None:
                return None
            if (frame.f_globals.get("__name__"), gen_code.co_name) not in _TRANSPARENT_WRAPPERS:
                return None
            manager = frame.f_locals.get("cm")
            if manager is None:
                return None
    return None
