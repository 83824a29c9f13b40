from __future__ import annotations

import asyncio

import anyio
import anyio.lowlevel
import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from exitstack_otel import ExitStackMiddleware, get_exit_stack
from exitstack_otel.shield import cancellation_can_reach_task

_SCOPE: Scope = {"type": "http", "method": "GET", "path": "/", "headers": []}


async def _receive() -> dict[str, object]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: object) -> None:
    pass


@pytest.mark.anyio
async def test_cleanup_finishes_when_an_enclosing_scope_is_cancelled_mid_unwind() -> None:
    started = anyio.Event()
    go_on = anyio.Event()
    finished: list[str] = []

    async def cleanup() -> None:
        started.set()
        # set only after the group is cancelled: unshielded, that cancellation lands here (trio
        # and anyio's asyncio scopes both deliver it to a waiting task at once), and never returns
        await go_on.wait()
        finished.append("cleanup")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        get_exit_stack(scope).push_async_callback(cleanup)

    middleware = ExitStackMiddleware(app)
    async with anyio.create_task_group() as group:
        group.start_soon(middleware, dict(_SCOPE), _receive, _send)
        await started.wait()
        group.cancel_scope.cancel()
        go_on.set()
    assert finished == ["cleanup"]


@pytest.mark.anyio
async def test_sync_only_stack_runs_every_callback_when_cancelled_before_the_unwind() -> None:
    finished: list[str] = []
    pushed = anyio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        stack = get_exit_stack(scope)
        stack.callback(finished.append, "first")
        stack.callback(finished.append, "second")
        pushed.set()
        await anyio.sleep_forever()  # cancelled here; the unwind follows with a pending cancellation

    middleware = ExitStackMiddleware(app)
    async with anyio.create_task_group() as group:
        group.start_soon(middleware, dict(_SCOPE), _receive, _send)
        await pushed.wait()
        group.cancel_scope.cancel()
    assert finished == ["second", "first"]


@pytest.mark.anyio
async def test_cancellation_can_reach_task_inside_any_anyio_scope() -> None:
    with anyio.CancelScope():
        assert cancellation_can_reach_task()
        await anyio.lowlevel.checkpoint()
    reached: list[bool] = []

    async def child() -> None:
        reached.append(cancellation_can_reach_task())

    async with anyio.create_task_group() as group:
        group.start_soon(child)
    assert reached == [True]


@pytest.mark.anyio
async def test_cancellation_cannot_reach_a_plain_asyncio_task(anyio_backend: str) -> None:
    if anyio_backend != "asyncio":
        assert cancellation_can_reach_task()  # trio: every checkpoint can be cancelled
        return

    async def plain() -> bool:
        return cancellation_can_reach_task()

    # a task made by asyncio itself, as uvicorn makes one per request: no anyio scope encloses it
    assert await asyncio.get_running_loop().create_task(plain()) is False


@pytest.mark.anyio
@pytest.mark.parametrize("suspends", [False, True], ids=["at-once", "suspending"])
async def test_an_async_exit_that_suppresses_the_endpoints_error_is_obeyed(suspends: bool) -> None:
    seen: list[str] = []

    async def handled(exc_type: type[BaseException] | None, *details: object) -> bool:
        if suspends:
            await anyio.lowlevel.checkpoint()
        seen.append(exc_type.__name__ if exc_type else "none")
        return exc_type is LookupError  # handled here: the request goes on as if it never raised

    def app_raising(error: Exception) -> ASGIApp:
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            get_exit_stack(scope).push_async_exit(handled)
            raise error

        return app

    await ExitStackMiddleware(app_raising(LookupError("handled")))(dict(_SCOPE), _receive, _send)
    with pytest.raises(ValueError, match="not handled"):
        await ExitStackMiddleware(app_raising(ValueError("not handled")))(dict(_SCOPE), _receive, _send)
    assert seen == ["LookupError", "ValueError"]
