"""Python 3.11's unwinds: the first part run at once, as a task of its own, without a task each.

The unwind needs a task of its own (``shield`` says why), but most unwinds never suspend, and a
3.11 task costs: its first step waits for a later event-loop turn, and the request's task waits
two turns for it. 3.12's eager tasks avoid the turns (``shield`` uses them there; they cost less
than what follows). Here each thread keeps one spare task, parked on a future of its own. An
unwind's first part runs inside the request's step, but as the spare: ``asyncio.current_task()``
answers the spare, and the unwind's context is a copy of the request's, so whatever a callback
captures there (``asyncio.timeout``, an anyio cancel scope, a context variable) is what it has if
the unwind goes on later. An unwind over by then cost no task at all. One that suspended is
handed to the spare, which wakes and carries it on from where it stopped, and the next unwind
parks a new spare.

Switching the current task takes asyncio's own private ``_enter_task`` and ``_leave_task``, the
two calls a task's step makes around every step (C tasks and pure-Python ones alike). Where they
are missing, or the caller runs outside a task, ``start`` answers None and the caller makes an
ordinary task.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import threading
import types
from collections.abc import Coroutine, Generator
from contextlib import suppress
from typing import Any, TypeVar

_T = TypeVar("_T")

_Handoff = tuple[Coroutine[Any, Any, Any], Any, contextvars.Context]
"""What a suspended unwind hands its spare: the coroutine, what it yielded, its context."""

_enter_task: Any
_leave_task: Any
try:
    # private: how a task's step makes itself the loop's current task (asyncio 3.7 to 3.13)
    from asyncio.tasks import _enter_task, _leave_task
except ImportError:  # another asyncio: every unwind gets an ordinary task
    _enter_task = _leave_task = None

AVAILABLE = sys.version_info[:2] == (3, 11) and _enter_task is not None
"""3.11 is the first whose tasks take a ``context`` (a spare must not hold on to a request's);
3.12's eager tasks cost less."""


SPARE_NAME = "exitstack-otel spare"
"""What ``asyncio.all_tasks()`` shows for a parked spare (it keeps the name once it carries one)."""


class _Spare:
    """A parked task, and the future it waits on for an unwind to carry on."""

    __slots__ = ("busy", "parking", "task")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.busy = False
        self.parking: asyncio.Future[_Handoff] = loop.create_future()
        carrier = _carry(self.parking)
        # advanced to its handoff point before the task exists: a cancellation of the task before
        # its first step (a loop turn later) then lands inside the carrier
        carrier.send(None)
        # an empty context: a spare outlives the request it was made in, and must not keep its
        # context variables alive (the unwinds it carries run in their own)
        empty = contextvars.Context()
        task = asyncio.Task(carrier, loop=loop, name=SPARE_NAME, context=empty)  # type: ignore[call-arg,unused-ignore]
        # Idle by design: a loop closed without cancelling it has nothing to report about it.
        # (Private too, and the only way to say so; a task that carries an unwind reports again.)
        _log_destroy_pending(task, False)
        self.task: asyncio.Task[Any] = task


_spares = threading.local()


def start(
    loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, _T]
) -> tuple[asyncio.Task[_T], bool, _T | None] | None:
    """Run ``coro``'s first part now, as a task of its own: that task, whether ``coro`` is over,
    and its result if so. None where that cannot be done; ``coro`` was then not touched."""
    request = asyncio.current_task(loop)
    if not AVAILABLE or request is None:
        return None
    spare: _Spare | None = getattr(_spares, "spare", None)
    if spare is None or spare.busy or spare.task.get_loop() is not loop or spare.task.done():
        spare = _spares.spare = _Spare(loop)
    task = spare.task
    context = contextvars.copy_context()
    spare.busy = True  # an unwind nested inside this one's first part parks its own spare
    _leave_task(loop, request)
    _enter_task(loop, task)
    try:
        yielded = context.run(coro.send, None)
    except StopIteration as finished:
        return task, True, finished.value
    finally:
        _leave_task(loop, task)
        _enter_task(loop, request)
        spare.busy = False
    # suspended: the spare carries it on, and is a spare no more
    _spares.spare = None
    _log_destroy_pending(task, True)
    spare.parking.set_result((coro, yielded, context))
    return task, False, None


def _log_destroy_pending(task: asyncio.Task[Any], log: bool) -> None:
    with suppress(AttributeError):  # another task implementation: it may warn, nothing worse
        task._log_destroy_pending = log  # type: ignore[attr-defined]


@types.coroutine
def _suspend(value: Any) -> Generator[Any, Any, Any]:
    """Hands ``value`` to the task, as the coroutine that yielded it would have."""
    return (yield value)


async def _carry(parking: asyncio.Future[_Handoff]) -> Any:
    """The spare's coroutine: parked until an unwind is handed over, then ``yield from`` it,
    from where it stopped and in its own context."""
    thrown: BaseException | None = None
    try:
        await _suspend(None)  # the handoff point
        coro, yielded, context = await parking
    except BaseException as received:
        if not parking.done() or parking.cancelled():
            return None  # cancelled while parked: the event loop is ending
        # cancelled after the handoff, before this task's next step: the unwind's to handle
        coro, yielded, context = parking.result()
        thrown = received
    while True:
        try:
            if thrown is not None:
                passed_on, thrown = thrown, None
                yielded = context.run(coro.throw, passed_on)
            else:
                try:
                    sent = await _suspend(yielded)
                except BaseException as received:  # a cancellation, or close(): the unwind's
                    thrown = received
                    continue
                yielded = context.run(coro.send, sent)
        except StopIteration as finished:
            return finished.value
