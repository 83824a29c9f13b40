"""naming.identity: the key a push is known by says what naming it would say, for every push."""

from __future__ import annotations

import functools
import io
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from typing import Any

import anyio
import pytest

from exitstack_otel import naming, semconv


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


class Proxy:
    """Answers every attribute itself, as a proxy does: only exact types may decide."""

    def __getattr__(self, name: str) -> Any:
        return f"proxied {name}"

    def __exit__(self, *exc: object) -> None:
        pass


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


def cleanup_exit(*exc: object) -> None:
    pass


async def _pushes(stack: Pushes) -> None:
    """Every kind of push; FastAPI's wrappers keep their frames (what identity looks through)
    until the stack unwinds."""
    manager = Manager()
    stack.callback(cleanup)
    stack.callback(lambda: None)
    stack.callback(manager.close)
    stack.callback(functools.partial(cleanup))
    stack.callback(print)
    stack.push_async_callback(acleanup)
    stack.push_async_callback(manager.aclose)
    stack.enter_context(Manager())
    stack.enter_context(session())
    stack.enter_context(threading.Lock())  # written in C: a builtin exit method on 3.15
    stack.enter_context(io.BytesIO())
    await stack.enter_async_context(Manager())
    await stack.enter_async_context(connection())
    from fastapi import concurrency

    await stack.enter_async_context(concurrency.contextmanager_in_threadpool(session()))
    await stack.enter_async_context(concurrency.contextmanager_in_threadpool(Manager()))
    stack.push(cleanup_exit)
    stack.push(Manager())
    stack.push(Proxy())
    stack.push_async_exit(Manager())


def _named(pushed: Callable[..., Any], is_sync: bool) -> tuple[str, str]:
    kind, target = naming.classify(pushed, is_sync)
    return kind, naming.default_name(kind, target)


def _key_name(thing: object) -> str:
    return thing if isinstance(thing, str) else thing.__qualname__  # type: ignore[attr-defined]


def test_every_key_says_the_kind_and_name_the_slow_path_would() -> None:
    async def check() -> None:
        async with Pushes() as stack:
            await _pushes(stack)
            keys = 0
            for pushed, is_sync in stack.pushed:
                key = naming.identity(pushed, is_sync, "s")
                if key is None:
                    continue
                keys += 1
                stack_name, kind, thing = key
                assert (stack_name, kind, _key_name(thing)) == ("s", *_named(pushed, is_sync)), pushed
            assert keys == len(stack.pushed) - 2  # all but the partial and the builtin

    anyio.run(check)


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (threading.Lock, "lock"),
        (threading.RLock, "RLock"),
        (io.BytesIO, "BytesIO"),
    ],
    ids=["lock", "rlock", "file"],
)
def test_a_manager_written_in_c_is_a_context_known_by_its_type(make: Callable[[], Any], name: str) -> None:
    # the same kind, name and key on every supported Python (3.15 pushes a builtin exit method)
    stack = Pushes()
    manager = make()
    stack.enter_context(manager)
    [(pushed, is_sync)] = stack.pushed
    assert _named(pushed, is_sync) == (semconv.KIND_CONTEXT, name)
    assert naming.identity(pushed, is_sync, "s") == ("s", semconv.KIND_CONTEXT, type(manager))
    anyio.run(stack.aclose)


def test_only_an_exit_of_an_instance_is_a_context() -> None:
    # builtins named __exit__ that are no manager's: a class's, a module's
    assert naming.exit_method_owner(len) is None
    assert naming.exit_method_owner(threading.Lock().__enter__) is None
    assert naming.exit_method_owner(type(threading.Lock()).__exit__) is None
    lock = threading.Lock()
    assert naming.exit_method_owner(lock.__exit__) is lock
    manager = Manager()
    assert naming.exit_method_owner(manager.__exit__) is manager
    assert naming.exit_method_owner(manager.close) is None


def test_fastapis_wrappers_are_known_by_what_they_hold() -> None:
    """Every push of a sync dependency that yields is known by its key, not named again."""
    from fastapi import concurrency

    async def check() -> None:
        stack = Pushes()
        await stack.enter_async_context(concurrency.contextmanager_in_threadpool(session()))
        await stack.enter_async_context(concurrency.contextmanager_in_threadpool(Manager()))
        (wrapped_generator, _), (wrapped_class, _) = stack.pushed
        assert naming.identity(wrapped_generator, False, "s") == ("s", "async_context", "session")
        assert naming.identity(wrapped_class, False, "s") == ("s", "async_context", Manager)
        await stack.aclose()

    anyio.run(check)
