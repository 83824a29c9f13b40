"""naming.identity: the compiled key (``_identity.c``) is the pure-Python one's, push for push."""

from __future__ import annotations

import functools
import gc
import sys
import types
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from typing import Any

import anyio
import pytest

from exitstack_otel import naming
from tests.conftest import require_compiled

require_compiled("_identity", naming.identity is not naming.python_identity)
compiled: Any = naming.identity


class Pushes(AsyncExitStack):
    """Records what reaches _push_exit_callback, as InstrumentedAsyncExitStack sees it."""

    def __init__(self) -> None:
        super().__init__()
        self.pushed: list[tuple[Callable[..., Any], bool]] = []

    def _push_exit_callback(self, callback: Callable[..., Any], is_sync: bool = True) -> None:
        self.pushed.append((callback, is_sync))
        super()._push_exit_callback(callback, is_sync)  # type: ignore[misc]


class Manager:
    def __enter__(self) -> Manager:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    async def __aenter__(self) -> Manager:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    def close(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    @staticmethod
    def static() -> None:
        pass

    @classmethod
    def klass(cls) -> None:
        pass

    def __call__(self, *exc: object) -> None:
        pass


class Proxy:
    """Answers every attribute itself, as a proxy does: only exact types may decide."""

    def __getattr__(self, name: str) -> Any:
        return f"proxied {name}"

    def __exit__(self, *exc: object) -> None:
        pass


class Nameless:
    def __call__(self, *args: object) -> None:
        pass


class OddName(str):
    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = str.__hash__


@contextmanager
def session() -> Iterator[None]:
    yield


@asynccontextmanager
async def connection() -> AsyncIterator[None]:
    yield


def cleanup() -> None:
    pass


async def acleanup() -> None:
    pass


async def _pushes() -> list[tuple[Callable[..., Any], bool]]:
    """Every kind of push, made in the running loop: FastAPI's wrappers keep their frames (what
    identity looks through) until it ends."""
    stack = Pushes()
    manager = Manager()
    stack.callback(cleanup)
    stack.callback(lambda: None)
    stack.callback(manager.close)
    stack.callback(Manager.static)
    stack.callback(Manager.klass)
    stack.callback(functools.partial(cleanup))
    stack.callback(print)
    stack.callback(io_close)
    stack.callback(manager)
    stack.push_async_callback(acleanup)
    stack.push_async_callback(manager.aclose)
    stack.push_async_callback(functools.partial(acleanup))
    stack.enter_context(Manager())
    stack.enter_context(session())
    await stack.enter_async_context(Manager())
    await stack.enter_async_context(connection())
    try:  # FastAPI's wrappers (the venvs of make test-pythons have no FastAPI)
        from fastapi import concurrency
    except ImportError:
        pass
    else:
        # a sync dependency that yields, a class-based one, and one wrapped twice
        await stack.enter_async_context(concurrency.contextmanager_in_threadpool(session()))
        await stack.enter_async_context(concurrency.contextmanager_in_threadpool(Manager()))
        shielded = getattr(concurrency, "_asynccontextmanager_with_shielded_exit", None)
        if shielded is not None:
            inner = concurrency.contextmanager_in_threadpool(session())
            await stack.enter_async_context(shielded(inner, anyio.CancelScope()))
    stack.push(cleanup_exit)
    stack.push(Manager())
    stack.push(Proxy())
    stack.push_async_exit(acleanup_exit)
    stack.push_async_exit(Manager())
    stack.push(types.MethodType(Nameless(), manager))  # a method whose function has no __name__
    stack.push(types.MethodType(len, manager))
    pushed = list(stack.pushed)
    stack._exit_callbacks.clear()  # type: ignore[attr-defined]

    # what no public push method makes, but a caller can put there by hand
    wrapper = pushed[0][0]
    unwrapped = types.FunctionType(wrapper.__code__, wrapper.__globals__, None, None, wrapper.__closure__)
    rewrapped = types.FunctionType(wrapper.__code__, wrapper.__globals__, None, None, wrapper.__closure__)
    rewrapped.__wrapped__ = Manager.static  # type: ignore[attr-defined]
    odd = Manager().__exit__
    odd_method = types.MethodType(_renamed(OddName("close")), Manager())
    gen_cm = session()
    gen_cm.gen = "not a generator"  # type: ignore[assignment]
    pushed += [
        (unwrapped, True),
        (rewrapped, True),
        (odd, False),
        (odd_method, True),
        (gen_cm.__exit__, True),
        (Proxy().__exit__, True),
        (object(), True),  # type: ignore[list-item]  # not callable: a caller's mistake
    ]
    return pushed


def io_close() -> None:
    pass


def cleanup_exit(*exc: object) -> None:
    pass


async def acleanup_exit(*exc: object) -> None:
    pass


def _renamed(name: str) -> Callable[..., None]:
    def function(*exc: object) -> None:
        pass

    function.__name__ = name
    return function


def _answer(identity: Callable[..., Any], pushed: Callable[..., Any], is_sync: bool) -> object:
    try:
        return identity(pushed, is_sync, "exitstack")
    except Exception as exc:  # the same error, from either
        return type(exc), str(exc)


def test_the_compiled_key_is_the_pure_python_key_for_every_push() -> None:
    async def check() -> None:
        # each push as it was made, and as the other kind (a caller of the private method could)
        cases = [(pushed, flag) for pushed, is_sync in await _pushes() for flag in (is_sync, not is_sync)]
        answers = [_answer(naming.python_identity, pushed, is_sync) for pushed, is_sync in cases]
        for (pushed, is_sync), expected in zip(cases, answers, strict=True):
            assert _answer(compiled, pushed, is_sync) == expected, (pushed, is_sync)
        # every kind of key, None and an error are among the answers: the comparison covers them
        kinds = {answer[1] for answer in answers if isinstance(answer, tuple) and len(answer) == 3}
        assert kinds == {"callback", "async_callback", "exit", "async_exit", "context", "async_context"}
        assert None in answers
        assert [answer for answer in answers if isinstance(answer, tuple) and len(answer) == 2]

    anyio.run(check)


def test_fastapis_wrappers_are_known_by_what_they_hold() -> None:
    """Every push of a sync dependency that yields is known by its key, not named again."""
    concurrency = pytest.importorskip("fastapi.concurrency")

    async def check() -> None:
        stack = Pushes()
        await stack.enter_async_context(concurrency.contextmanager_in_threadpool(session()))
        await stack.enter_async_context(concurrency.contextmanager_in_threadpool(Manager()))
        (wrapped_generator, _), (wrapped_class, _) = stack.pushed
        for identity in (naming.python_identity, compiled):
            assert identity(wrapped_generator, False, "s") == ("s", "async_context", "session")
            assert identity(wrapped_class, False, "s") == ("s", "async_context", Manager)
        await stack.aclose()

    anyio.run(check)


def test_the_compiled_key_leaves_nothing_behind() -> None:
    name = "stack " + "name"  # not interned: its count is this test's alone

    def rounds(pushes: list[tuple[Callable[..., Any], bool]], count: int) -> None:
        for _ in range(count):
            for pushed, is_sync in pushes:
                _answer(lambda *args: compiled(args[0], args[1], name), pushed, is_sync)

    async def check() -> None:
        pushes = await _pushes()
        rounds(pushes, 100)
        gc.collect()
        references, blocks = sys.getrefcount(name), sys.getallocatedblocks()
        rounds(pushes, 2000)
        gc.collect()
        assert sys.getrefcount(name) == references
        assert sys.getallocatedblocks() - blocks < 500

    anyio.run(check)


def test_the_compiled_key_is_what_the_stack_uses() -> None:
    from exitstack_otel import stack

    assert stack.identity is compiled  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="3 arguments"):
        compiled(cleanup, True)  # type: ignore[call-arg]
