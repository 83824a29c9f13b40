"""The middleware runs every cleanup in the request's own task, as contextlib does in FastAPI's
middleware: what checks its owner task, the exception being handled, and nested requests all
behave as they do there. Each case failed while the unwind ran in a task of its own."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from collections.abc import Callable
from contextlib import AsyncExitStack

import anyio
import anyio.lowlevel
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from exitstack_otel import DEFAULT_SCOPE_KEY, ExitStackMiddleware, get_exit_stack
from tests.support.asgi import ContextlibMiddleware, get_status
from tests.support.otel_helpers import Sdk


async def _suspending_cleanup() -> None:
    await anyio.lowlevel.checkpoint()


def _limited_app(limiter: anyio.CapacityLimiter, lock: anyio.Lock) -> Starlette:
    async def endpoint(request: Request) -> PlainTextResponse:
        stack: AsyncExitStack = request.scope[DEFAULT_SCOPE_KEY]  # contextlib's or ours
        await limiter.acquire()
        stack.callback(limiter.release)  # checks that the releasing task is the borrower
        await lock.acquire()
        stack.callback(lock.release)  # likewise the owner
        group = await stack.enter_async_context(anyio.create_task_group())  # left where entered
        group.start_soon(anyio.lowlevel.checkpoint)
        stack.push_async_callback(_suspending_cleanup)
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/", endpoint)])


@pytest.mark.anyio
@pytest.mark.parametrize("middleware", [ContextlibMiddleware, ExitStackMiddleware])
async def test_task_bound_resources_are_released_by_their_owner(
    middleware: Callable[[ASGIApp], ASGIApp], sdk: Sdk, caplog: pytest.LogCaptureFixture
) -> None:
    limiter, lock = anyio.CapacityLimiter(2), anyio.Lock()
    app = middleware(_limited_app(limiter, lock))
    caplog.set_level(logging.WARNING)
    with anyio.fail_after(30):  # a bound for a hang, never a measurement
        statuses = [await get_status(app, "/") for _ in range(5)]
    assert statuses == [200] * 5
    assert limiter.borrowed_tokens == 0
    assert not lock.locked()
    assert caplog.records == []  # a plain request logs nothing, on every supported Python


class EndpointError(Exception):
    pass


class CleanupError(Exception):
    pass


def _chain(exc: BaseException | None) -> list[str]:
    names: list[str] = []
    while exc is not None and len(names) < 10:
        names.append(type(exc).__name__)
        exc = exc.__context__
    return names


async def _failing_after_a_suspension(seen: list[object]) -> None:
    await anyio.lowlevel.checkpoint()
    seen.append(type(sys.exc_info()[1]).__name__)
    raise CleanupError


async def _run_failing_request(middleware: Callable[[ASGIApp], ASGIApp]) -> tuple[list[str], list[object]]:
    seen: list[object] = []

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        stack = scope[DEFAULT_SCOPE_KEY]

        def last(*exc_details: object) -> None:
            seen.append(type(sys.exc_info()[1]).__name__)
            raise KeyError("last")

        stack.push(last)
        stack.push_async_callback(_failing_after_a_suspension, seen)
        raise EndpointError

    try:
        await middleware(endpoint)(
            {"type": "http", "method": "GET", "path": "/", "headers": []}, _receive, _send
        )
    except BaseException as exc:
        return _chain(exc), seen
    raise AssertionError("the request did not fail")


async def _receive() -> dict[str, object]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: object) -> None:
    pass


@pytest.mark.anyio
async def test_the_root_cause_stays_in_the_chain_after_a_suspending_cleanup() -> None:
    expected = await _run_failing_request(ContextlibMiddleware)
    assert expected == (["KeyError", "CleanupError", "EndpointError"], ["EndpointError", "EndpointError"])
    assert await _run_failing_request(ExitStackMiddleware) == expected


def test_nested_in_process_requests_leave_no_task_behind() -> None:
    # a cleanup that calls another app behind the middleware in process (httpx's ASGI transport)
    # before its first await: 10,000 of them, and the loop holds as many tasks as before
    async def inner_endpoint(request: Request) -> PlainTextResponse:
        get_exit_stack(request).push_async_callback(_suspending_cleanup)
        return PlainTextResponse("inner")

    inner = ExitStackMiddleware(Starlette(routes=[Route("/", inner_endpoint)]))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=inner), base_url="http://inner")
    answers: list[str] = []

    async def call_inner() -> None:
        answers.append((await client.get("/")).text)

    async def outer(scope: Scope, receive: Receive, send: Send) -> None:
        get_exit_stack(scope).push_async_callback(call_inner)

    app = ExitStackMiddleware(outer)
    scope = {"type": "http", "method": "GET", "path": "/", "headers": []}

    async def main() -> tuple[int, int]:
        for _ in range(100):
            await app(dict(scope), _receive, _send)
        gc.collect()
        tasks_before = len(asyncio.all_tasks())
        for _ in range(10_000):
            await app(dict(scope), _receive, _send)
        gc.collect()
        await client.aclose()
        return tasks_before, len(asyncio.all_tasks())

    tasks_before, tasks_after = asyncio.run(main())
    assert answers == ["inner"] * 10_100
    assert tasks_after == tasks_before == 1  # main's own task


@pytest.mark.anyio
async def test_the_unwind_runs_in_the_requests_task() -> None:
    tasks: list[object] = []

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        tasks.append(anyio.get_current_task().id)

        async def cleanup() -> None:
            await anyio.lowlevel.checkpoint()
            tasks.append(anyio.get_current_task().id)

        stack = get_exit_stack(scope)
        stack.push_async_callback(cleanup)
        stack.callback(lambda: tasks.append(anyio.get_current_task().id))

    await ExitStackMiddleware(endpoint)(
        {"type": "http", "method": "GET", "path": "/", "headers": []}, _receive, _send
    )
    assert len(tasks) == 3
    assert len(set(tasks)) == 1
