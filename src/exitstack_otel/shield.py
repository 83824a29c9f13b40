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
  figures). From 3.11 on none is made for an unwind that never suspends (most do not): a spare
  task stands in for it (``eager``), and only an unwind that suspends is handed to it. Where
  that cannot be done, 3.12 and newer start an eager task (over at once if the unwind never
  suspends), and 3.10 makes an ordinary task. Only for an unwind that suspended
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
from collections.abc import Awaitable
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn

import anyio

from . import eager, inflight

if TYPE_CHECKING:
    from .stack import InstrumentedAsyncExitStack

_task_states: Any
try:
    # private: anyio's record of which cancel scope each asyncio task runs in (anyio 4.x)
    from anyio._backends._asyncio import _task_states
except ImportError:  # another anyio layout: always shield
    _task_states = None

_Unwound = eager.Unwound

_EAGER_TASKS = sys.version_info >= (3, 12)
"""3.12's eager tasks run at once, up to their first suspension: an unwind that never suspends
(most cleanups do not) is over before the task is made, with no task switch and nothing to wait
for. Earlier Pythons' tasks always start on a later loop turn."""


# strong references too: the event loop keeps only weak ones to running tasks
_unwind_tasks: set[asyncio.Task[_Unwound]] = set()


def unwind(
    stack: InstrumentedAsyncExitStack,
    exc_type: type[BaseException] | None,
    exc: BaseException | None,
    tb: TracebackType | None,
) -> Awaitable[bool | None]:
    """``stack.__aexit__`` run to completion; a cancellation of the caller comes after it.
    Await the result at once: on asyncio the unwind may already have run (what it raised is
    raised here)."""
    if not stack.awaits_on_exit:
        # only sync callbacks, or none: the unwind never awaits, so no cancellation can land in it
        return stack.__aexit__(exc_type, exc, tb)
    return _start(stack, exc_type, exc, tb, False)  # type: ignore[no-any-return]


def unwind_after_return(stack: InstrumentedAsyncExitStack) -> Awaitable[object] | None:
    """``unwind(stack, None, None, None)`` for a request that raised nothing, but None when the
    unwind is over already (most are), which costs less than awaiting what says so. (Given no
    exception, ``__aexit__`` returns False, or raises.)"""
    if not stack.awaits_on_exit:
        return stack.__aexit__(None, None, None)
    return _start(stack, None, None, None, True)  # type: ignore[no-any-return]


def _start(
    stack: InstrumentedAsyncExitStack,
    exc_type: type[BaseException] | None,
    exc: BaseException | None,
    tb: TracebackType | None,
    returns_false: bool,
) -> Any:
    """What ``unwind`` answers; None, with ``returns_false``, for an unwind over already."""
    loop = asyncio._get_running_loop()  # None under trio, without the cost of an exception
    if loop is None:
        return _shielded(stack, exc_type, exc, tb)
    exiting = stack.__aexit__(exc_type, exc, tb)
    if eager.AVAILABLE:
        first = eager.first_part(loop, exiting, returns_false)  # at once, as the unwind's own task
        if first.__class__ is not eager.Pending:
            return first  # over: None, or a done future of the result
        if first.spare is not None:
            waiters: list[asyncio.Future[None]] = []  # what the request waits on, the newest last
            return _outlast(loop, first.carry_on(waiters), waiters)
    return _in_a_task(loop, exiting)


async def _shielded(
    stack: InstrumentedAsyncExitStack,
    exc_type: type[BaseException] | None,
    exc: BaseException | None,
    tb: TracebackType | None,
) -> bool | None:
    with anyio.CancelScope(shield=True):
        suppressed = await stack.__aexit__(exc_type, exc, tb)
    return suppressed


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
    return loop is None or _reachable_by_cancellation(loop)


def _reachable_by_cancellation(loop: asyncio.AbstractEventLoop) -> bool:
    if _task_states is None:
        return True
    state = _task_states.get(asyncio.current_task(loop))
    return state is not None and getattr(state, "cancel_scope", True) is not None


async def _in_a_task(loop: asyncio.AbstractEventLoop, exiting: Awaitable[bool | None]) -> bool | None:
    waiters: list[asyncio.Future[None]] = []
    unwinding = _unwound(exiting, waiters)
    if _EAGER_TASKS:
        task = asyncio.Task(unwinding, loop=loop, eager_start=True)  # type: ignore[call-arg,unused-ignore]
        if task.done():
            suppressed, escaped = task.result()
            if escaped is not None:
                _reraise(escaped)
            return suppressed  # type: ignore[no-any-return]
    else:
        task = loop.create_task(unwinding)
    return await _outlast(loop, task, waiters)


async def _outlast(
    loop: asyncio.AbstractEventLoop, task: asyncio.Task[_Unwound], waiters: list[asyncio.Future[None]]
) -> bool | None:
    """The unwind's result once its task is over, a cancellation of the caller after it."""
    # the unwind suspended: only now can a cancellation be delivered to this task
    _unwind_tasks.add(task)
    # should the unwind's task end without a word (cancelled before it started)
    task.add_done_callback(partial(_finished, waiters))
    if _reachable_by_cancellation(loop):
        with anyio.CancelScope(shield=True):
            cancellation = await _outlast_cancellation(loop, task, waiters)
    else:
        cancellation = await _outlast_cancellation(loop, task, waiters)
    suppressed, escaped = task.result()  # raises only if the event loop itself cancelled the unwind
    if escaped is not None:
        _reraise(escaped)
    if cancellation is not None:
        _reraise(cancellation)
    return suppressed  # type: ignore[no-any-return]


async def _unwound(exiting: Awaitable[bool | None], waiters: list[asyncio.Future[None]]) -> _Unwound:
    """The unwind as a task of its own runs it (3.10, and where no spare can stand in)."""
    # The escaped exception is handed over as a value: a task takes a CancelledError that escapes
    # it for its own cancellation, and result() would raise a new one.
    try:
        unwound: _Unwound = await exiting, None
    except BaseException as escaped:
        unwound = False, escaped
    if waiters:
        eager.wake(waiters)
    return unwound


def _finished(waiters: list[asyncio.Future[None]], task: asyncio.Task[_Unwound]) -> None:
    _unwind_tasks.discard(task)
    if waiters:
        eager.wake(waiters)


async def _outlast_cancellation(
    loop: asyncio.AbstractEventLoop, task: asyncio.Task[_Unwound], waiters: list[asyncio.Future[None]]
) -> asyncio.CancelledError | None:
    """Wait for the unwind's task through any number of cancellations; returns the first."""
    cancellation: asyncio.CancelledError | None = None
    while not task.done():
        # a future of our own to wait on: cancelling this task cancels it, never the unwind's task
        # (what asyncio.shield does, with one future fewer per wait)
        waiter = loop.create_future()
        waiters.append(waiter)
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
