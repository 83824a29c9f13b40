"""The count of requests in flight behind ``wait_for_unwinds()``, on asyncio and trio."""

from __future__ import annotations

import threading

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest
from starlette.types import Message, Receive, Scope, Send

from exitstack_otel import ExitStackMiddleware, get_exit_stack, wait_for_unwinds
from exitstack_otel.inflight import requests_in_flight, wait_until_idle

_SCOPE: Scope = {"type": "http", "method": "GET", "path": "/", "headers": []}


async def _receive() -> Message:
    await anyio.sleep_forever()
    raise AssertionError("unreachable")


async def _send(message: Message) -> None:
    pass


@pytest.mark.anyio
async def test_wait_for_unwinds_returns_at_once_with_nothing_in_flight() -> None:
    assert requests_in_flight() == 0
    with anyio.fail_after(5):
        await wait_for_unwinds()


@pytest.mark.anyio
async def test_waits_for_a_request_that_takes_many_loop_turns_to_reach_its_unwind() -> None:
    cleaned: list[str] = []
    entered = anyio.Event()

    async def cleanup() -> None:
        await anyio.lowlevel.checkpoint()  # an unwind that awaits: it runs in a task of its own
        cleaned.append("cleanup")

    async def slow_to_unwind(scope: Scope, receive: Receive, send: Send) -> None:
        get_exit_stack(scope).push_async_callback(cleanup)
        entered.set()
        for _ in range(100):  # as a cancelled streaming response does, in fewer turns
            await anyio.lowlevel.checkpoint()

    app = ExitStackMiddleware(slow_to_unwind)
    waited: list[int] = []
    async with anyio.create_task_group() as group:
        group.start_soon(app, dict(_SCOPE), _receive, _send)
        await entered.wait()
        assert requests_in_flight() == 1
        with anyio.fail_after(10):
            await wait_for_unwinds()
        waited.append(requests_in_flight())
    assert cleaned == ["cleanup"]
    assert waited == [0]


@pytest.mark.anyio
async def test_every_waiter_is_woken_and_one_that_gave_up_is_forgotten() -> None:
    release = anyio.Event()

    async def held(scope: Scope, receive: Receive, send: Send) -> None:
        await release.wait()

    app = ExitStackMiddleware(held)
    woken: list[str] = []

    async def waiter(name: str) -> None:
        await wait_until_idle()
        woken.append(name)

    async with anyio.create_task_group() as group:
        group.start_soon(app, dict(_SCOPE), _receive, _send)
        while requests_in_flight() == 0:
            await anyio.lowlevel.checkpoint()
        with anyio.move_on_after(0.01) as gave_up:  # a waiter that gives up: its deadline must pass
            await wait_until_idle()
        assert gave_up.cancelled_caught
        group.start_soon(waiter, "first")
        group.start_soon(waiter, "second")
        await anyio.wait_all_tasks_blocked()  # both waiters wait, the request too
        assert woken == []
        release.set()
    assert sorted(woken) == ["first", "second"]
    assert requests_in_flight() == 0


@pytest.mark.anyio
async def test_a_failing_request_leaves_the_count() -> None:
    async def fail(scope: Scope, receive: Receive, send: Send) -> None:
        raise LookupError("endpoint failed")

    with pytest.raises(LookupError):
        await ExitStackMiddleware(fail)(dict(_SCOPE), _receive, _send)
    assert requests_in_flight() == 0


@pytest.mark.anyio
async def test_the_lifespan_is_not_a_request_in_flight() -> None:
    # wait_for_unwinds() runs inside the lifespan: counting it would wait for itself
    seen: list[int] = []

    async def lifespan(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(requests_in_flight())

    await ExitStackMiddleware(lifespan)({"type": "lifespan"}, _receive, _send)
    assert seen == [0]


def test_each_thread_counts_its_own_requests() -> None:
    seen_elsewhere: list[int] = []
    release = threading.Event()
    entered = threading.Event()

    async def held(scope: Scope, receive: Receive, send: Send) -> None:
        entered.set()
        await anyio.to_thread.run_sync(release.wait)

    async def serve_one() -> None:
        await ExitStackMiddleware(held)(dict(_SCOPE), _receive, _send)

    server = threading.Thread(target=anyio.run, args=(serve_one,))
    server.start()
    assert entered.wait(30), "the other thread's request never started"
    seen_elsewhere.append(requests_in_flight())
    release.set()
    server.join(10)
    assert seen_elsewhere == [0]
