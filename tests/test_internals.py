"""Every private name ``exitstack_otel.internals`` looks up has a fallback that works: each guard
is run with its name gone, and the package imports and serves a request without any of them."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import anyio._backends._asyncio
import anyio.lowlevel
import pytest
from opentelemetry import trace
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.metrics import _internal as metrics_internal
from starlette.types import Receive, Scope, Send

from exitstack_otel import ExitStackMiddleware, get_exit_stack, internals, middleware, naming, semconv


@contextlib.contextmanager
def session() -> Iterator[None]:
    yield


@contextlib.asynccontextmanager
async def connection() -> AsyncIterator[None]:
    yield


def cleanup() -> None:
    pass


def test_the_callback_wrappers_are_found_through_the_public_push_methods() -> None:
    stack = contextlib.ExitStack()
    stack.callback(cleanup)
    [(_, wrapper)] = stack._exit_callbacks  # type: ignore[attr-defined]
    assert wrapper.__code__ is internals.SYNC_CALLBACK_CODE
    assert internals.ASYNC_CALLBACK_CODE is not None
    assert internals.ASYNC_CALLBACK_CODE is not internals.SYNC_CALLBACK_CODE
    stack.pop_all()


def test_without_the_wrappers_code_a_callback_is_named_as_an_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    assert internals._wrapper_code(lambda probe: 1 / 0) is None  # a push that no longer works
    monkeypatch.setattr(naming, "_SYNC_CB_CODE", None)
    monkeypatch.setattr(naming, "_ASYNC_CB_CODE", None)
    stack = contextlib.ExitStack()
    stack.callback(cleanup)
    [(_, wrapper)] = stack._exit_callbacks  # type: ignore[attr-defined]
    assert naming.classify(wrapper, True) == (semconv.KIND_EXIT, wrapper)
    assert naming.identity(wrapper, True, "s") == ("s", semconv.KIND_EXIT, wrapper.__qualname__)
    stack.pop_all()


def test_without_the_generator_managers_base_they_are_known_by_the_decorators_classes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(contextlib, "_GeneratorContextManagerBase")
    found = internals._generator_manager_types()
    assert found == (type(session()), type(connection()))
    monkeypatch.setattr(naming, "GENERATOR_MANAGER_TYPES", found)
    assert naming.context_manager_name(session()) == "session"
    assert naming.context_manager_name(connection()) == "connection"


def test_a_manager_without_its_generator_is_named_by_its_class() -> None:
    manager = session()
    del manager.gen
    assert naming.context_manager_name(manager) == type(manager).__qualname__
    assert naming.identity(manager.__exit__, True, "s") is None  # no key: named on the slow path


def test_without_anyios_task_states_every_request_is_shielded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(anyio._backends._asyncio, "_task_states")
    assert internals._anyio_task_states() is None
    monkeypatch.undo()
    monkeypatch.setattr(internals, "_TASK_STATES", None)
    monkeypatch.setattr(internals, "_TASK_STATES_BY_REF", None)
    assert internals.anyio_scope_encloses(None)
    # the middleware's quick test ("no task has an anyio scope") never passes without anyio's dict
    monkeypatch.setattr(middleware, "ANYIO_SCOPED_TASKS", internals._anyio_scoped_tasks(None))
    finished: list[str] = []
    real_task_states = anyio._backends._asyncio._task_states

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        state = real_task_states.get(asyncio.current_task())  # type: ignore[arg-type]
        assert state is not None
        assert state.cancel_scope is not None  # the middleware's own scope
        stack = get_exit_stack(scope)
        group = await stack.enter_async_context(anyio.create_task_group())
        group.start_soon(anyio.lowlevel.checkpoint)

        async def release() -> None:
            await anyio.lowlevel.checkpoint()
            finished.append("release")

        stack.push_async_callback(release)

    async def main() -> None:
        await ExitStackMiddleware(endpoint)(_scope(), _receive, _send)

    asyncio.run(main())  # a plain task: shielded all the same, and the task group leaves in order
    assert finished == ["release"]


def test_without_the_weak_dicts_data_its_get_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(internals, "_TASK_STATES_BY_REF", None)

    async def plain() -> bool:
        return internals.anyio_scope_encloses(asyncio.current_task())

    async def in_a_scope() -> bool:
        with anyio.CancelScope():
            await anyio.lowlevel.checkpoint()
            encloses = internals.anyio_scope_encloses(asyncio.current_task())
        return encloses

    assert asyncio.run(plain()) is False
    assert asyncio.run(in_a_scope()) is True


def test_a_plain_task_gets_no_scope_while_no_task_has_an_anyio_scope() -> None:
    # a fresh interpreter: in this one, other tests' tasks may still hold anyio state
    code = textwrap.dedent(
        """
        import asyncio
        import anyio
        from anyio._backends._asyncio import _task_states
        from exitstack_otel import ExitStackMiddleware, internals

        seen = []

        async def endpoint(scope, receive, send):
            state = _task_states.get(asyncio.current_task())
            seen.append(None if state is None else state.cancel_scope)

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            pass

        async def main():
            scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
            assert not internals.ANYIO_SCOPED_TASKS  # the quick test passes: no scope entered
            await ExitStackMiddleware(endpoint)(dict(scope), receive, send)
            with anyio.CancelScope() as outer:  # once a task is in an anyio scope, requests ask
                assert internals.ANYIO_SCOPED_TASKS
                await ExitStackMiddleware(endpoint)(dict(scope), receive, send)
            return outer

        outer = asyncio.run(main())
        assert seen[0] is None, seen  # no anyio state: the middleware entered no scope
        assert seen[1] is not None and seen[1] is not outer, seen  # its own, inside the outer one
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_without_the_apis_runtime_context_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry import context
    from opentelemetry.context.context import Context, _RuntimeContext

    class OtherRuntimeContext(_RuntimeContext):  # as OTEL_PYTHON_CONTEXT may name one
        def attach(self, ctx: Context) -> Any:
            raise NotImplementedError

        def get_current(self) -> Context:
            return Context({"from": "other"})

        def detach(self, token: Any) -> None:
            raise NotImplementedError

    assert internals.current_context() is context.get_current()
    monkeypatch.setattr(context, "_RUNTIME_CONTEXT", OtherRuntimeContext())
    getter = internals._current_context_getter()
    assert getter is context.get_current
    assert getter() == {"from": "other"}


def test_the_public_running_loop_lookup() -> None:
    assert internals._get_running_loop_public() is None

    async def inside() -> bool:
        return internals._get_running_loop_public() is asyncio.get_running_loop()

    assert asyncio.run(inside())


def test_without_the_apis_private_globals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(trace, "_PROXY_TRACER_PROVIDER")
    assert internals._api_globals() is None
    monkeypatch.undo()
    monkeypatch.delattr(metrics_internal, "_ProxyMeterProvider")
    assert internals._proxy_meter_provider_type() is NoOpMeterProvider


def test_the_package_imports_and_serves_without_the_private_names() -> None:
    # what a release that renamed them would look like, in a fresh interpreter
    code = textwrap.dedent(
        """
        import asyncio, contextlib
        del contextlib._GeneratorContextManagerBase
        del asyncio._get_running_loop
        import opentelemetry.metrics._internal as metrics_internal
        del metrics_internal._ProxyMeterProvider

        from exitstack_otel import ExitStackMiddleware, get_exit_stack, internals

        assert internals.running_loop is internals._get_running_loop_public
        ran = []

        @contextlib.asynccontextmanager
        async def connection():
            yield
            ran.append("connection")

        async def endpoint(scope, receive, send):
            stack = get_exit_stack(scope)
            await stack.enter_async_context(connection())
            stack.callback(ran.append, "callback")

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            pass

        scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
        asyncio.run(ExitStackMiddleware(endpoint)(scope, receive, send))
        assert ran == ["callback", "connection"], ran
        print("served")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "served"
    assert done.stderr == ""  # silent where a name is gone


def _scope() -> Scope:
    return {"type": "http", "method": "GET", "path": "/", "headers": []}


async def _receive() -> dict[str, object]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: object) -> None:
    pass
