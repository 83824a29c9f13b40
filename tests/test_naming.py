"""Callback names and kinds: code, never data."""

from __future__ import annotations

import functools
import inspect
import io
import threading
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

import pytest
from fastapi.concurrency import contextmanager_in_threadpool
from starlette.datastructures import FormData, Headers, UploadFile

from exitstack_otel import semconv
from exitstack_otel.stack import InstrumentedAsyncExitStack
from tests.support.otel_helpers import Sdk

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from pathlib import Path

    from exitstack_otel.telemetry import CallbackNamer


class Pool:
    def release(self, connection: str) -> None:
        pass

    async def arelease(self, connection: str) -> None:
        pass


class Session:
    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_details: object) -> None:
        pass


class AsyncSession:
    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, *exc_details: object) -> None:
        pass


class Closer:
    def __call__(self, *args: object) -> None:
        pass


@contextmanager
def get_db(url: str) -> Iterator[str]:
    yield url


@asynccontextmanager
async def get_async_db(url: str) -> AsyncIterator[str]:
    yield url


def close_file(path: str) -> None:
    pass


def exit_function(*exc_details: object) -> None:
    pass


async def async_exit_function(*exc_details: object) -> None:
    pass


async def _names(
    sdk: Sdk, push: Callable[[InstrumentedAsyncExitStack], Any], **options: Any
) -> list[tuple[str, str]]:
    async with InstrumentedAsyncExitStack(
        "s", telemetry=sdk.telemetry(callback_spans="all", **options)
    ) as stack:
        pushed = push(stack)
        if hasattr(pushed, "__await__"):
            await pushed
    spans = [span for span in sdk.spans() if span.name != semconv.SPAN_UNWIND]
    found = []
    for span in spans:
        attributes = dict(span.attributes or {})
        assert span.name == f"{semconv.SPAN_CALLBACK} {attributes[semconv.CALLBACK_NAME]}"
        found.append((str(attributes[semconv.CALLBACK_NAME]), str(attributes[semconv.CALLBACK_KIND])))
    return found


def _held_lock() -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()  # push() enters nothing: the unwind releases it
    return lock


CASES: list[tuple[str, Callable[[InstrumentedAsyncExitStack], Any], tuple[str, str]]] = [
    ("bound method", lambda s: s.callback(Pool().release, "secret"), ("Pool.release", "callback")),
    (
        "async bound method",
        lambda s: s.push_async_callback(Pool().arelease, "x"),
        ("Pool.arelease", "async_callback"),
    ),
    (
        "partial",
        lambda s: s.callback(functools.partial(functools.partial(close_file, "/secret/a.txt"))),
        ("close_file", "callback"),
    ),
    ("builtin function", lambda s: s.callback(print, "secret", end=""), ("print", "callback")),
    ("builtin method", lambda s: s.callback(io.BytesIO(b"secret").close), ("BytesIO.close", "callback")),
    ("callable object", lambda s: s.callback(Closer()), ("Closer", "callback")),
    # managers written in C: 3.15's contextlib pushes their exits unbound by it (a builtin method)
    ("C context manager", lambda s: s.enter_context(threading.Lock()), ("lock", "context")),
    ("C file", lambda s: s.enter_context(io.BytesIO()), ("BytesIO", "context")),
    ("C manager pushed", lambda s: s.push(_held_lock()), ("lock", "context")),
    ("exit function", lambda s: s.push(exit_function), ("exit_function", "exit")),
    (
        "async exit function",
        lambda s: s.push_async_exit(async_exit_function),
        ("async_exit_function", "async_exit"),
    ),
    ("class context manager", lambda s: s.enter_context(Session()), ("Session", "context")),
    ("pushed context manager", lambda s: s.push(Session()), ("Session", "context")),
    (
        "async class context manager",
        lambda s: s.enter_async_context(AsyncSession()),
        ("AsyncSession", "async_context"),
    ),
    (
        "pushed async context manager",
        lambda s: s.push_async_exit(AsyncSession()),
        ("AsyncSession", "async_context"),
    ),
    ("@contextmanager", lambda s: s.enter_context(get_db("postgres://secret")), ("get_db", "context")),
    (
        "@asynccontextmanager",
        lambda s: s.enter_async_context(get_async_db("secret")),
        ("get_async_db", "async_context"),
    ),
    (
        "FastAPI's threadpool wrapper is looked through",
        lambda s: s.enter_async_context(contextmanager_in_threadpool(get_db("secret"))),
        ("get_db", "async_context"),
    ),
    (
        "starlette form",
        lambda s: s.push_async_callback(FormData().close),
        ("FormData.close", "async_callback"),
    ),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("push", "expected"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
async def test_default_names_and_kinds(
    sdk: Sdk, push: Callable[[InstrumentedAsyncExitStack], Any], expected: tuple[str, str]
) -> None:
    assert await _names(sdk, push) == [expected]
    assert "secret" not in repr([dict(span.attributes or {}) for span in sdk.spans()])


@pytest.mark.anyio
@pytest.mark.parametrize(("push", "expected"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
async def test_pushed_again_the_same_code_keeps_its_name_and_kind(
    sdk: Sdk, push: Callable[[InstrumentedAsyncExitStack], Any], expected: tuple[str, str]
) -> None:
    # the second push is known by its identity (naming.identity) and is not named again
    telemetry = sdk.telemetry(callback_spans="all")
    for _ in range(2):
        async with InstrumentedAsyncExitStack("s", telemetry=telemetry) as stack:
            pushed = push(stack)
            if hasattr(pushed, "__await__"):
                await pushed
    names = [dict(span.attributes or {}) for span in sdk.spans() if span.name != semconv.SPAN_UNWIND]
    assert [(found[semconv.CALLBACK_NAME], found[semconv.CALLBACK_KIND]) for found in names] == [expected] * 2


def _logged(function: Callable[[], None]) -> Callable[[], None]:
    @functools.wraps(function)
    def logged() -> None:
        function()

    return logged


@_logged
def close_db() -> None:
    pass


@_logged
def close_cache() -> None:
    pass


@pytest.mark.anyio
async def test_functions_sharing_a_decorators_code_keep_their_own_names(sdk: Sdk) -> None:
    telemetry = sdk.telemetry(callback_spans="all")
    for _ in range(2):
        async with InstrumentedAsyncExitStack("s", telemetry=telemetry) as stack:
            stack.callback(close_db)
            stack.callback(_logged(close_cache))  # made per push, as closures often are
    names = [dict(span.attributes or {}) for span in sdk.spans() if span.name != semconv.SPAN_UNWIND]
    assert [found[semconv.CALLBACK_NAME] for found in names] == ["close_cache", "close_db"] * 2


@pytest.mark.anyio
async def test_file_names_never_reach_names(sdk: Sdk, tmp_path: Path) -> None:
    secret_file = tmp_path / "secret-report.txt"
    secret_file.write_text("x")
    upload = UploadFile(io.BytesIO(b"x"), filename="secret-upload.pdf", headers=Headers({}))
    with secret_file.open("rb") as opened:
        names = await _names(
            sdk,
            lambda s: (s.callback(opened.close), s.push_async_callback(upload.close)),
        )
    assert names == [("UploadFile.close", "async_callback"), ("BufferedReader.close", "callback")]
    sdk.spans_exporter.clear()
    assert await _names(sdk, lambda s: s.enter_context(secret_file.open("rb"))) == [
        ("BufferedReader", "context")
    ]
    assert "secret" not in repr([dict(span.attributes or {}) for span in sdk.spans()])


@pytest.mark.anyio
async def test_a_namer_may_name_callbacks(sdk: Sdk) -> None:
    seen: list[tuple[object, str]] = []

    def namer(target: object, kind: str) -> str | None:
        seen.append((target, kind))
        return "pool release" if isinstance(target, functools.partial) else None

    release = functools.partial(close_file, "a")
    session = Session()
    custom: CallbackNamer = namer
    names = await _names(
        sdk, lambda s: (s.callback(release), s.enter_context(session)), callback_namer=custom
    )
    assert names == [("Session", "context"), ("pool release", "callback")]
    assert seen == [(release, "callback"), (session, "context")]


class Delegating:
    """A proxy as session wrappers and lazy objects are: every attribute it lacks comes from the
    user's data, ``__qualname__`` and ``__class__`` included."""

    def __init__(self, owner: str) -> None:
        self._owner = owner

    def __getattr__(self, name: str) -> Any:
        if name == "__class__":
            return functools.partial
        if name in ("gen", "gi_code", "ag_code", "gi_frame", "__self__", "func", "__func__"):
            return self
        return f"session-of-{self._owner}"

    def __call__(self, *args: object) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> Delegating:
        return self

    def __exit__(self, *exc_details: object) -> None:
        pass

    async def __aenter__(self) -> Delegating:
        return self

    async def __aexit__(self, *exc_details: object) -> None:
        pass


async def _aclose_with(proxy: Delegating) -> None:
    pass


PROXY_CASES: list[tuple[str, Callable[[InstrumentedAsyncExitStack, Delegating], Any], tuple[str, str]]] = [
    ("callable proxy", lambda s, p: s.callback(p), ("Delegating", "callback")),
    (
        "async callable proxy",
        lambda s, p: s.push_async_callback(_aclose_with, p),
        ("_aclose_with", "async_callback"),
    ),
    ("proxy in a partial", lambda s, p: s.callback(functools.partial(p, 1)), ("Delegating", "callback")),
    ("proxy's own method", lambda s, p: s.callback(p.close), ("Delegating.close", "callback")),
    ("proxy as exit callback", lambda s, p: s.push(p), ("Delegating", "context")),
    ("proxy as context manager", lambda s, p: s.enter_context(p), ("Delegating", "context")),
    (
        "proxy as async context manager",
        lambda s, p: s.enter_async_context(p),
        ("Delegating", "async_context"),
    ),
]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("push", "expected"), [case[1:] for case in PROXY_CASES], ids=[case[0] for case in PROXY_CASES]
)
async def test_an_object_that_delegates_its_attributes_is_named_by_its_type(
    sdk: Sdk, push: Callable[[InstrumentedAsyncExitStack, Delegating], Any], expected: tuple[str, str]
) -> None:
    proxy = Delegating("alice@example.com")
    assert proxy.__qualname__ == "session-of-alice@example.com"  # what reading it would have named

    def push_it(stack: InstrumentedAsyncExitStack) -> Any:
        pushed = push(stack, proxy)
        return pushed if inspect.isawaitable(pushed) else None  # the proxy itself is not awaited

    assert await _names(sdk, push_it) == [expected]
    assert "alice" not in repr([dict(span.attributes or {}) for span in sdk.spans()])
    points = [point for metric in sdk.metrics().values() for point in metric.data.data_points]
    assert points
    assert "alice" not in repr([dict(point.attributes or {}) for point in points])
