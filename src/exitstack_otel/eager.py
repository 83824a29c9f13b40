"""An unwind's first part, run at once as a task of its own, without making a task (3.11 and newer).

The unwind needs a task of its own (``shield`` says why), but most unwinds never suspend, and a
task costs: on 3.11 its first step waits for a later event-loop turn, and even 3.12's eager
tasks cost more than the rest of a no-SDK request's overhead together. Here each thread keeps one
spare task, parked on a future of its own. An unwind's first part runs inside the request's step,
but as the spare: ``asyncio.current_task()`` answers the spare, and the unwind's context is a copy
of the request's, so whatever a callback captures there (``asyncio.timeout``, an anyio cancel
scope, a context variable) is what it has if the unwind goes on later. An unwind over by then cost
no task at all. One that suspended is handed to the spare, which wakes and carries it on from
where it stopped, and the next unwind parks a new spare.

Standing in as the current task takes asyncio's private map of each loop's running task, the dict
that both task implementations' steps read and write (3.7 to 3.13); a dict store costs a fraction
of a call to ``_enter_task``. It is checked against ``asyncio.current_task()`` whenever a spare is
made. Where it is missing or disagrees, or the caller runs outside a task, ``first_part`` answers
a ``Pending`` with no spare, the coroutine untouched, and the caller makes a task of its own.

The first step itself runs compiled where the install could build ``_first_step.c`` (a C compiler
and Python's headers; the wheel has it): it stores into the same map, and sends into the
coroutine with no ``StopIteration`` to make and catch. Elsewhere the pure-Python path below does
the same; the tests run both. ``compiled()`` says which runs.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sys
import threading
import types
from collections.abc import Callable, Coroutine, Generator
from contextlib import suppress
from typing import Any

logger = logging.getLogger(__name__)

Unwound = tuple[Any, BaseException | None]
"""What a carried unwind ends with: its result, or the exception that escaped it."""

_current_tasks: Any
try:
    # private: each running loop's current task, as tasks' steps set it (asyncio 3.7 to 3.13)
    from asyncio.tasks import _current_tasks  # type: ignore[attr-defined,no-redef]
except ImportError:  # another asyncio: every unwind gets a task of its own
    _current_tasks = None

AVAILABLE = sys.version_info >= (3, 11) and isinstance(_current_tasks, dict)
"""3.11 is the first whose tasks take a ``context``: a spare must not hold on to a request's."""

SPARE_NAME = "exitstack-otel spare"
"""What ``asyncio.all_tasks()`` shows for a parked spare (it keeps the name once it carries one)."""


class _Spare:
    """A parked task, and the future it waits on for an unwind to carry on."""

    __slots__ = ("idle_on", "parking", "returned_false", "task")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.idle_on: asyncio.AbstractEventLoop | None = loop
        """Its loop while it can stand in; None while a first part runs as it (an unwind nested
        in that one needs another spare), and for good once it carries an unwind or has ended."""
        # what first_part hands back for most unwinds: awaiting a done future costs no frame
        self.returned_false: asyncio.Future[Any] = loop.create_future()
        self.returned_false.set_result(False)
        self.parking: asyncio.Future[_Handoff] = loop.create_future()
        carrier = _carry(self, self.parking)
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
        self.task: asyncio.Task[Unwound] = task


class Pending:
    """A first part that did not finish: ``carry_on`` hands it to its spare. ``spare`` is None
    when it could not start (``coro`` untouched)."""

    __slots__ = ("context", "coro", "spare", "yielded")

    def __init__(
        self, spare: _Spare | None, coro: Coroutine[Any, Any, Any], yielded: Any, context: Any
    ) -> None:
        self.spare = spare
        self.coro = coro
        self.yielded = yielded
        self.context = context

    def carry_on(self, waiters: list[asyncio.Future[None]]) -> asyncio.Task[Unwound]:
        """The spare's task, which now carries the unwind on; it wakes ``waiters[-1]`` from the
        unwind's last step, and ends with what the unwind returned or raised."""
        spare = self.spare
        assert spare is not None  # only a started first part is carried on
        _log_destroy_pending(spare.task, True)
        spare.parking.set_result((self.coro, self.yielded, self.context, waiters))
        return spare.task


_Handoff = tuple[Coroutine[Any, Any, Any], Any, contextvars.Context, list["asyncio.Future[None]"]]

# The last spare made, for the common case of one loop in the process; other loops' threads find
# theirs in _spares. A spare is only ever used by the thread that runs its loop.
_last: _Spare | None = None
_spares = threading.local()


try:
    # the hot path of first_part, compiled (_first_step.c), wherever the install could build it
    from . import _first_step
except ImportError:  # no C compiler or headers where it was installed, or not CPython
    _first_step = None  # type: ignore[assignment]
_compiled_step: Callable[[asyncio.AbstractEventLoop, object, Coroutine[Any, Any, Any], object], Any] | None
_compiled_step = None if _first_step is None else _first_step.first_step


def first_part(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], returns_false: bool) -> Any:
    """Run ``coro`` now, as a task of its own, up to its end or its first suspension: a done
    future of its result if it ended (what it raised, it raises), else a ``Pending`` to carry it
    on. ``returns_false`` says the caller knows ``coro`` returns False if it ends (a stack's
    ``__aexit__`` given no exception does): then an ended first part answers None, nothing to
    await, which costs less than awaiting even a done future."""
    spare = _last
    if spare is None or spare.idle_on is not loop:
        spare = _spare_for(loop)
        if spare is None:
            return Pending(None, coro, None, None)
    step = _compiled_step
    if step is not None:
        # The spare stays idle meanwhile: an unwind started inside this first part finds it, and
        # the compiled step answers that one "not started" (the loop's current task is this very
        # spare already); a new spare then stands in for it, below.
        first = step(loop, spare.task, coro, None if returns_false else spare.returned_false)
        if first.__class__ is Pending:
            if first.context is not None:
                first.spare = spare  # suspended: the spare is this unwind's from now on
                spare.idle_on = None
            elif _current_tasks.get(loop) is spare.task:
                # started inside this spare's own first part: another spare stands in for it
                _forget_spare()
                return first_part(loop, coro, returns_false)
        return first
    current_tasks = _current_tasks
    try:
        request = current_tasks[loop]
    except KeyError:  # not in a task: nothing to stand in for
        return Pending(None, coro, None, None)
    context = contextvars.copy_context()
    spare.idle_on = None
    current_tasks[loop] = spare.task
    try:
        if returns_false:
            # next() takes the StopIteration in C, where it costs a fraction of catching it here
            yielded = context.run(next, coro.__await__(), _OVER)
            returned = False
        else:
            try:
                yielded = context.run(coro.send, None)
            except StopIteration as finished:
                returned = finished.value
                yielded = _OVER
    finally:
        current_tasks[loop] = request
        spare.idle_on = loop
    if yielded is _OVER:
        if returned is False:
            return None if returns_false else spare.returned_false
        done: asyncio.Future[Any] = loop.create_future()
        done.set_result(returned)
        return done
    # suspended: the spare is this unwind's from now on
    spare.idle_on = None
    return Pending(spare, coro, yielded, context)


_OVER: Any = object()
"""What no coroutine yields: ``first_part``'s sign that it ended."""


def _spare_for(loop: asyncio.AbstractEventLoop) -> _Spare | None:
    global _last, AVAILABLE
    spare: _Spare | None = getattr(_spares, "spare", None)
    if spare is None or spare.idle_on is not loop:
        request = asyncio.current_task(loop)
        if request is None:
            return None
        if _current_tasks.get(loop) is not request:
            AVAILABLE = False
            logger.warning(
                "exitstack-otel: this asyncio keeps its current task elsewhere; "
                "each suspending unwind now gets a task of its own"
            )
            return None
        spare = _spares.spare = _Spare(loop)
    _last = spare
    return spare


def _forget_spare() -> None:
    """The next first part makes a new spare; the last one stays parked until its loop ends,
    as the pure-Python path leaves a spare that an unwind nested in its first part replaced."""
    global _last
    _last = _spares.spare = None


def _log_destroy_pending(task: asyncio.Task[Any], log: bool) -> None:
    with suppress(AttributeError):  # another task implementation: it may warn, nothing worse
        task._log_destroy_pending = log  # type: ignore[attr-defined]


@types.coroutine
def _suspend(value: Any) -> Generator[Any, Any, Any]:
    """Hands ``value`` to the task, as the coroutine that yielded it would have."""
    return (yield value)


async def _carry(spare: _Spare, parking: asyncio.Future[_Handoff]) -> Unwound:
    """The spare's coroutine: parked until an unwind is handed over, then ``yield from`` it,
    from where it stopped and in its own context."""
    thrown: BaseException | None = None
    try:
        await _suspend(None)  # the handoff point
        coro, yielded, context, waiters = await parking
    except BaseException as received:
        if not parking.done() or parking.cancelled():
            spare.idle_on = None  # cancelled while parked (the event loop is ending): used up
            return None, None
        # cancelled after the handoff, before this task's next step: the unwind's to handle
        coro, yielded, context, waiters = parking.result()
        thrown = received
    # The escaped exception is handed over as a value: a task takes a CancelledError that escapes
    # it for its own cancellation, and result() would raise a new one.
    unwound: Unwound
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
            unwound = finished.value, None
            break
        except BaseException as escaped:
            unwound = None, escaped
            break
    if waiters:
        wake(waiters)
    return unwound


def wake(waiters: list[asyncio.Future[None]]) -> None:
    """Wake the request waiting on the newest of ``waiters``, from the unwind's last step: its
    task's done callbacks run one loop turn after it ends, and the request would resume one
    turn after that."""
    waiter = waiters[-1]
    if not waiter.done():
        waiter.set_result(None)


def compiled() -> bool:
    """Whether ``first_part`` runs its compiled step (``make bench`` and the tests report it)."""
    return _compiled_step is not None


if _first_step is not None and isinstance(_current_tasks, dict):
    _first_step.setup(_current_tasks, Pending)
else:
    _compiled_step = None
