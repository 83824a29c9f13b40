"""exitstack_otel.eager: an unwind's first part runs at once as a spare task, and goes on in it.

The shield uses it on every Python from 3.11 (the tests force it on, whatever the module found)."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import inspect
import logging
import sys
import threading
from collections.abc import Coroutine
from typing import Any

import anyio
import pytest
from opentelemetry import baggage
from opentelemetry import context as otel_context

from exitstack_otel import eager
from tests.conftest import FIRST_STEPS, use_first_step

pytestmark = pytest.mark.skipif(sys.version_info < (3, 11), reason="3.10's tasks take no context")

request_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_var", default="unset")


@pytest.fixture(autouse=True, params=FIRST_STEPS)
def first_step(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test on the compiled first step and on the pure-Python one."""
    monkeypatch.setattr(eager, "AVAILABLE", True)
    use_first_step(monkeypatch, request.param)
    return str(request.param)


def _started(
    coro: Coroutine[Any, Any, Any], returns_false: bool = False
) -> tuple[asyncio.Task[Any] | None, bool, Any]:
    """``first_part`` as the shield calls it: the task carrying the unwind on (None if it ended),
    whether it ended, and its result then."""
    first = eager.first_part(asyncio.get_running_loop(), coro, returns_false)
    if first is None:
        assert returns_false, "None says an unwind known to return False is over"
        return None, True, False
    if isinstance(first, eager.Pending):
        assert first.spare is not None, "a task runs: the first part starts"
        return first.carry_on([]), False, None
    assert isinstance(first, asyncio.Future)
    assert first.done()
    return None, True, first.result()


async def _carried(task: asyncio.Task[Any] | None) -> Any:
    """What the unwind a spare carried returned (what it raised, raised)."""
    assert task is not None
    result, escaped = await task
    if escaped is not None:
        raise escaped
    return result


def test_a_first_part_that_never_suspends_runs_at_once_as_another_task() -> None:
    async def unwind() -> tuple[object, str]:
        request_var.set("set by the unwind")
        return asyncio.current_task(), request_var.get()

    async def main() -> None:
        request_var.set("set by the endpoint")
        request = asyncio.current_task()
        first = _started(unwind())
        second = _started(unwind())
        assert first[:2] == second[:2] == (None, True)
        assert first[2][1] == second[2][1] == "set by the unwind"
        spare = first[2][0]
        assert isinstance(spare, asyncio.Task)
        assert spare is not request
        assert spare.get_name() == eager.SPARE_NAME
        assert second[2][0] is spare, "no suspension: the same spare serves the next unwind"
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
        assert await _carried(task) == "before the suspension"
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
        assert task is not None
        assert not done
        await asyncio.wait([task])  # as the shield waits: a cancellation of the request stays its own
        assert task.result() == ("timed out", None)
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
        assert await _carried(task) is True

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
        assert task is not None
        assert not done
        task.cancel("now")  # before the spare has woken to carry the unwind on
        assert await _carried(task) == "cleaned up"
        assert caught == ["now"]

    asyncio.run(main())


def test_an_unwind_started_inside_a_first_part_gets_its_own_spare() -> None:
    async def inner() -> object:
        await asyncio.sleep(0)
        return asyncio.current_task()

    async def outer() -> tuple[object, object]:
        task, _, _ = _started(inner())
        return asyncio.current_task(), await _carried(task)

    async def main() -> None:
        task, done, _ = _started(outer())
        assert not done
        outer_task, inner_task = await _carried(task)
        assert outer_task is task
        assert inner_task is not task

    asyncio.run(main())


def test_an_idle_spare_ends_with_its_loop_without_a_word(caplog: pytest.LogCaptureFixture) -> None:
    async def unwind() -> object:
        return asyncio.current_task()

    async def main() -> asyncio.Task[Any]:
        task = _started(unwind())[2]
        assert isinstance(task, asyncio.Task)
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


def test_a_spare_cancelled_while_parked_is_not_used_again() -> None:
    async def unwind() -> object:
        return asyncio.current_task()

    async def main() -> None:
        spare = _started(unwind())[2]
        assert isinstance(spare, asyncio.Task)
        spare.cancel()  # what asyncio.run does to the tasks left as its loop ends
        await asyncio.sleep(0)
        assert spare.done()
        assert _started(unwind())[2] is not spare

    asyncio.run(main())


def test_the_result_is_what_the_coroutine_returned_known_or_not() -> None:
    async def returns(value: object) -> object:
        return value

    async def main() -> None:
        assert _started(returns(True))[1:] == (True, True)
        assert _started(returns(None))[1:] == (True, None)
        marker = object()
        assert _started(returns(marker))[2] is marker
        assert _started(returns((1, 2)))[2] == (1, 2), "a tuple is one result, not arguments"
        assert _started(returns(False))[1:] == (True, False)
        # said by the caller (a stack's __aexit__ given no exception): None, nothing to await
        loop = asyncio.get_running_loop()
        assert eager.first_part(loop, returns(False), True) is None

    asyncio.run(main())


def test_what_the_first_part_raises_is_raised_and_the_request_is_current_again() -> None:
    class Failed(Exception):
        pass

    async def unwind() -> None:
        raise Failed("in a cleanup")

    async def main() -> None:
        request = asyncio.current_task()
        for returns_false in (False, True):
            with pytest.raises(Failed, match="in a cleanup"):
                _started(unwind(), returns_false)
            assert asyncio.current_task() is request

    asyncio.run(main())


def test_no_task_no_spare_and_the_coroutine_untouched() -> None:
    async def unwind() -> None:
        pass

    loop = asyncio.new_event_loop()
    try:
        coro = unwind()
        first = eager.first_part(loop, coro, False)  # no task runs: none to stand in for
        assert isinstance(first, eager.Pending)
        assert first.spare is None
        assert first.coro is coro
        assert inspect.getcoroutinestate(coro) == inspect.CORO_CREATED
        coro.close()
    finally:
        loop.close()


def test_an_asyncio_that_keeps_its_current_task_elsewhere_turns_spares_off(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(eager, "_current_tasks", {})  # a map asyncio.current_task() does not read
    monkeypatch.setattr(eager, "_last", None)
    monkeypatch.setattr(eager, "_spares", threading.local())
    ran: list[bool] = []

    async def unwind() -> None:
        ran.append(True)

    async def main() -> None:
        coro = unwind()
        first = eager.first_part(asyncio.get_running_loop(), coro, False)
        assert isinstance(first, eager.Pending)
        assert first.spare is None
        assert ran == [], "the coroutine untouched: the caller runs it in a task of its own"
        await coro

    with caplog.at_level(logging.WARNING, logger="exitstack_otel.eager"):
        asyncio.run(main())
    assert eager.AVAILABLE is False
    assert ["keeps its current task elsewhere" in record.getMessage() for record in caplog.records] == [True]


def test_first_parts_leave_nothing_behind() -> None:
    """No reference kept to what a first part returned, raised or ran in (the compiled step's
    reference counting, and the pure-Python path's)."""

    class Failed(Exception):
        pass

    marker = object()

    async def returns() -> object:
        return marker

    async def raises() -> None:
        raise Failed

    async def suspends() -> object:
        await asyncio.sleep(0)
        return marker

    async def rounds(count: int) -> None:
        for _ in range(count):
            _started(returns())
            assert _started(returns(), True)[1]
            with pytest.raises(Failed):
                _started(raises())
            assert await _carried(_started(suspends())[0]) is marker

    async def main() -> None:
        await rounds(200)  # spares, caches and free lists settle
        gc.collect()
        references, blocks = sys.getrefcount(marker), sys.getallocatedblocks()
        await rounds(2000)
        gc.collect()
        assert sys.getrefcount(marker) == references
        # a leak of one object per round would be thousands of blocks
        assert sys.getallocatedblocks() - blocks < 500

    asyncio.run(main())
