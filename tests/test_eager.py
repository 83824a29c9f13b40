"""exitstack_otel.eager: an unwind's first part runs at once as a spare task, and goes on in it.

The shield uses it on Python 3.11 only; it works wherever asyncio's tasks take a context, so these
tests force it on for every Python from 3.11."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
import sys
from collections.abc import Coroutine
from typing import Any

import anyio
import pytest
from opentelemetry import baggage
from opentelemetry import context as otel_context

from exitstack_otel import eager

pytestmark = pytest.mark.skipif(sys.version_info < (3, 11), reason="3.10's tasks take no context")

request_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_var", default="unset")


@pytest.fixture(autouse=True)
def _spares_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eager, "AVAILABLE", True)


def _started(coro: Coroutine[Any, Any, Any]) -> tuple[asyncio.Task[Any], bool, Any]:
    started = eager.start(asyncio.get_running_loop(), coro)
    assert started is not None
    return started


def test_a_first_part_that_never_suspends_runs_at_once_as_another_task() -> None:
    async def unwind(request: asyncio.Task[Any] | None) -> tuple[bool, str]:
        request_var.set("set by the unwind")
        return asyncio.current_task() is not request, request_var.get()

    async def main() -> None:
        request_var.set("set by the endpoint")
        request = asyncio.current_task()
        first = _started(unwind(request))
        second = _started(unwind(request))
        assert first[1:] == second[1:] == (True, (True, "set by the unwind"))
        assert first[0] is second[0], "no suspension: the same spare serves the next unwind"
        assert asyncio.current_task() is request
        assert request_var.get() == "set by the endpoint", "the unwind ran in a copy of the context"

    asyncio.run(main())


def test_an_unwind_that_suspends_goes_on_in_the_task_it_started_as() -> None:
    seen: list[object] = []

    async def unwind() -> str:
        seen.append(asyncio.current_task())
        request_var.set("before the suspension")
        token = otel_context.attach(baggage.set_baggage("cleanup", "on"))
        await asyncio.sleep(0)
        seen.append(asyncio.current_task())
        otel_context.detach(token)  # the token of the same context: no "failed to detach"
        return request_var.get()

    async def main() -> None:
        task, done, result = _started(unwind())
        assert (done, result) == (False, None)
        assert seen == [task]
        assert await task == "before the suspension"
        assert seen == [task, task]
        assert request_var.get() == "unset"
        assert baggage.get_baggage("cleanup") is None
        assert _started(unwind())[0] is not task, "the spare that carried an unwind is not reused"

    asyncio.run(main())


def test_a_timeout_entered_in_the_first_part_reaches_the_unwind_not_the_request() -> None:
    async def unwind() -> str:
        try:
            async with asyncio.timeout(0.01):  # type: ignore[attr-defined,unused-ignore]  # 3.11+
                await asyncio.sleep(3600)
        except TimeoutError:
            return "timed out"
        return "slept"

    async def main() -> None:
        request = asyncio.current_task()
        assert request is not None
        task, done, _ = _started(unwind())
        assert not done
        await asyncio.wait([task])  # as the shield waits: a cancellation of the request stays its own
        assert task.result() == "timed out"
        assert request.cancelling() == 0  # type: ignore[attr-defined,unused-ignore]  # 3.11+

    asyncio.run(main())


def test_an_anyio_scope_entered_in_the_first_part_cancels_the_unwind_only() -> None:
    async def unwind() -> bool:
        with anyio.move_on_after(0.01) as scope:
            await anyio.sleep(3600)
        return scope.cancelled_caught

    async def main() -> None:
        task, done, _ = _started(unwind())
        assert not done
        assert await task is True

    asyncio.run(main())


def test_a_cancellation_before_the_task_runs_again_is_handed_to_the_unwind() -> None:
    caught: list[str] = []

    async def unwind() -> str:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError as cancelled:
            caught.append(str(cancelled))
        await asyncio.sleep(0)  # and it goes on afterwards
        return "cleaned up"

    async def main() -> None:
        task, done, _ = _started(unwind())
        assert not done
        task.cancel("now")  # before the spare has woken to carry the unwind on
        assert await task == "cleaned up"
        assert caught == ["now"]

    asyncio.run(main())


def test_an_unwind_started_inside_a_first_part_gets_its_own_spare() -> None:
    async def inner() -> object:
        await asyncio.sleep(0)
        return asyncio.current_task()

    async def outer() -> tuple[object, object]:
        task, _, _ = _started(inner())
        return asyncio.current_task(), await task

    async def main() -> None:
        task, done, _ = _started(outer())
        assert not done
        outer_task, inner_task = await task
        assert outer_task is task
        assert inner_task is not task

    asyncio.run(main())


def test_an_idle_spare_ends_with_its_loop_without_a_word(caplog: pytest.LogCaptureFixture) -> None:
    async def unwind() -> None:
        pass

    async def main() -> asyncio.Task[Any]:
        task = _started(unwind())[0]
        assert not task.done()  # parked, waiting for an unwind that suspends
        assert task.get_name() == eager.SPARE_NAME
        return task

    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        first = asyncio.run(main())  # asyncio.run cancels what is left; the spare just ends
        assert first.done()
        loop = asyncio.new_event_loop()
        try:
            # a loop closed without cancelling its tasks: the spare is dropped silently
            second = loop.run_until_complete(main())
        finally:
            loop.close()
        third = asyncio.run(main())
        assert third is not second, "a new loop in the thread parks a spare of its own"
        del second
        gc.collect()
    assert not [record for record in caplog.records if "destroyed" in record.getMessage()]


def test_no_task_no_spare_and_the_coroutine_untouched() -> None:
    async def unwind() -> None:
        pass

    loop = asyncio.new_event_loop()
    try:
        coro = unwind()
        assert eager.start(loop, coro) is None  # no task runs: nothing to stand in for
        coro.close()
    finally:
        loop.close()


def test_without_the_private_calls_start_answers_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eager, "AVAILABLE", False)

    async def unwind() -> None:
        pass

    async def main() -> None:
        coro = unwind()
        assert eager.start(asyncio.get_running_loop(), coro) is None
        await coro

    asyncio.run(main())
