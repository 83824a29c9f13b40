"""Unwind a request's stack to the end, whatever cancels the task meanwhile, at the least cost.

Only an unwind that awaits can be interrupted: one with sync callbacks only (most requests) runs
as is. For the others:

- trio: a shielded cancel scope holds off every cancellation.
- asyncio: anyio's shield holds off anyio's cancellation but not the native ``Task.cancel()``
  (uvicorn's graceful-shutdown timeout, ``asyncio.wait_for``, a failing ``TaskGroup`` sibling),
  which throws ``CancelledError`` into whatever the task awaits, a cleanup included. So the unwind
  runs in a task of its own, and the request's task waits for it through any number of
  cancellations before passing the first one on. That task runs in a copy of the request's
  context: callbacks see the endpoint's context variables, but variables they set no longer leak
  out to the middleware's caller. The task is what costs most (benchmarks/RESULTS.md has the
  figures); on 3.12 and newer it starts eagerly, so an unwind that never suspends is over before
  the task would have been scheduled, and nothing more is done. Only for an unwind that suspended
  is the anyio shield (not free either) put around the wait, and only where an anyio scope
  encloses the request's task: otherwise nothing could re-deliver a cancellation every loop turn.
  A task of its own is the only way: a cancellation a callback's own timeout sends (anyio's
  ``move_on_after``, ``asyncio.timeout``) must reach it, one sent to the request must not, and
  both are ``Task.cancel()`` on whichever task runs the callback.

Nothing survives the end of the event loop: ``asyncio.run`` cancels every task left, cleanups
included. uvicorn ends its loop right after cancelling the requests that outlived
``timeout_graceful_shutdown``, unless the app's lifespan shutdown keeps it busy; awaiting
``wait_for_unwinds()`` there gives those requests' cleanups the time to finish. It waits for the
requests (``inflight``), not just for the unwind tasks: a cancelled request can take several loop
turns to reach its unwind, and until then there is no task to wait for.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Coroutine
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn

import anyio

from . import inflight

if TYPE_CHECKING:
    from .stack import InstrumentedAsyncExitStack

_task_states: Any
try:
    # private: anyio's record of which cancel scope each asyncio task runs in (anyio 4.x)
    from anyio._backends._asyncio import _task_states
except ImportError:  # another anyio layout: always shield
    _task_states = None

_Unwound = tuple[bool | None, BaseException | None]

if sys.version_info >= (3, 12):

    def _start_task(
        loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, _Unwound]
    ) -> asyncio.Task[_Unwound]:
        # runs at once, up to its first suspension: an unwind that never suspends (most cleanups
        # do not) is over before this returns, with no task switch and nothing to wait for
        return asyncio.Task(coro, loop=loop, eager_start=True)

else:

    def _start_task(
        loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, _Unwound]
    ) -> asyncio.Task[_Unwound]:
        return loop.create_task(coro)


# strong references too: the event loop keeps only weak ones to running tasks
_unwind_tasks: set[asyncio.Task[_Unwound]] = set()


def unwind(
    stack: InstrumentedAsyncExitStack,
    exc_type: type[BaseException] | None,
    exc: BaseException | None,
    tb: TracebackType | None,
) -> Awaitable[bool | None]:
    """``stack.__aexit__`` run to completion; a cancellation of the caller comes after it."""
    if not stack.awaits_on_exit:
        # only sync callbacks, or none: the unwind never awaits, so no cancellation can land in it
        return stack.__aexit__(exc_type, exc, tb)
    return _unwind_to_the_end(stack, exc_type, exc, tb)


async def wait_for_unwinds() -> None:
    """Return once every request of this event loop that entered an instrumented stack has
    unwound it, however long its cancellation takes to reach the stack. For a lifespan shutdown
    handler; bound it with ``anyio.move_on_after``."""
    await inflight.wait_until_idle()
    # unwinds of stacks no counted request owns (``unwind()`` called directly)
    loop = asyncio._get_running_loop()
    pending = [task for task in _unwind_tasks if not task.done() and task.get_loop() is loop]
    if pending:
        await asyncio.wait(pending)


def cancellation_can_reach_task() -> bool:
    """False only for an asyncio task that no anyio cancel scope encloses."""
    loop = asyncio._get_running_loop()  # None under trio, without the cost of an exception
    if _task_states is None or loop is None:
        return True
    state = _task_states.get(asyncio.current_task(loop))
    return state is not None and getattr(state, "cancel_scope", True) is not None


async def _unwind_to_the_end(
    stack: InstrumentedAsyncExitStack,
    exc_type: type[BaseException] | None,
    exc: BaseException | None,
    tb: TracebackType | None,
) -> bool | None:
    loop = asyncio._get_running_loop()  # None under trio, without the cost of an exception
    if loop is None:
        with anyio.CancelScope(shield=True):
            suppressed = await stack.__aexit__(exc_type, exc, tb)
        return suppressed
    waiting = _Waiting()
    task = _start_task(loop, _unwind_in_own_task(stack, exc_type, exc, tb, waiting))
    if not task.done():
        # the unwind suspended: only now can a cancellation be delivered to this task
        _unwind_tasks.add(task)
        task.add_done_callback(_unwind_tasks.discard)
        task.add_done_callback(waiting.wake)  # should the unwind's task end without a word
        if cancellation_can_reach_task():
            with anyio.CancelScope(shield=True):
                cancellation = await _outlast_cancellation(loop, task, waiting)
        else:
            cancellation = await _outlast_cancellation(loop, task, waiting)
    else:
        cancellation = None
    suppressed, escaped = task.result()  # raises only if the event loop itself cancelled the unwind
    if escaped is not None:
        _reraise(escaped)
    if cancellation is not None:
        _reraise(cancellation)
    return suppressed


class _Waiting:
    """The future the request's task waits on now; the unwind's task resolves it as it ends.

    Waking the request from inside the unwind's last step, not from the task's done callback,
    saves an event-loop turn: done callbacks run one turn after the task ends, and the request
    resumes one turn after that.
    """

    __slots__ = ("waiter",)

    def __init__(self) -> None:
        self.waiter: asyncio.Future[None] | None = None

    def wake(self, _task: object = None) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


async def _unwind_in_own_task(
    stack: InstrumentedAsyncExitStack,
    exc_type: type[BaseException] | None,
    exc: BaseException | None,
    tb: TracebackType | None,
    waiting: _Waiting,
) -> _Unwound:
    try:
        unwound: _Unwound = await stack.__aexit__(exc_type, exc, tb), None
    except BaseException as escaped:  # handed to the caller, who re-raises it
        unwound = False, escaped
    waiting.wake()
    return unwound


async def _outlast_cancellation(
    loop: asyncio.AbstractEventLoop, task: asyncio.Task[_Unwound], waiting: _Waiting
) -> asyncio.CancelledError | None:
    """Wait for the unwind's task through any number of cancellations; returns the first."""
    cancellation: asyncio.CancelledError | None = None
    while not task.done():
        # a future of our own to wait on: cancelling this task cancels it, never the unwind's task
        # (what asyncio.shield does, with one future fewer per wait)
        waiter = waiting.waiter = loop.create_future()
        try:
            await waiter
        except asyncio.CancelledError as cancelled:
            cancellation = cancellation or cancelled
    return cancellation


def _reraise(exc: BaseException) -> NoReturn:
    # a bare "raise exc" here would chain it to whatever the caller is handling
    context = exc.__context__
    try:
        raise exc
    except BaseException:
        exc.__context__ = context
        raise
