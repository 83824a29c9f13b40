"""A request's unwind, in the request's own task, out of reach of the cancel scopes around it.

contextlib runs every callback in the task that called ``__aexit__``, and much depends on that:
anyio's capacity limiters and locks check the task that releases them, a task group or cancel scope
entered on the stack must be left in the task that entered it, and the exception being handled
(``sys.exc_info()``, ``__context__`` chains) belongs to the task. So ``ExitStackMiddleware`` unwinds
in the request's task, as FastAPI's ``AsyncExitStackMiddleware`` does, with one difference: a
cancellation delivered through a cancel scope around the request (a client hanging up under
``BaseHTTPMiddleware``, a task group failing, trio's deadlines) waits until every callback has run,
and then propagates.

That is a cancel scope of our own, entered around the endpoint and shielded once the unwind
begins (anyio's and trio's scopes can be shielded at any time). It has to be entered before the
endpoint runs: a task group or cancel scope the endpoint enters on the stack is then inside it,
and leaves in order; a shielded scope entered at the unwind would sit inside those, and leaving
them from within it is an error. It is only entered where a cancel scope could reach the task: on
trio always, on asyncio where an anyio scope encloses the request's task. A plain uvicorn request
has none, and gets plain contextlib.

A native ``Task.cancel()`` (uvicorn's graceful-shutdown timeout, ``asyncio.wait_for``) passes every
cancel scope: it interrupts the callback awaiting at that moment, exactly as with contextlib, which
hands the ``CancelledError`` down the stack to the callbacks still to run, and they run (asyncio
delivers one cancellation once). ``wait_for_unwinds()`` in the lifespan shutdown is what lets
requests' cleanups finish before uvicorn ends the event loop.
"""

from __future__ import annotations

import asyncio

import anyio

from . import inflight, internals


def request_scope() -> anyio.CancelScope | None:
    """A cancel scope to enter around a request and shield when its unwind begins; None where no
    cancel scope can reach the request's task (then there is nothing to shield it from)."""
    if cancellation_can_reach_task():
        return anyio.CancelScope()
    return None


def cancellation_can_reach_task() -> bool:
    """False only for an asyncio task that no anyio cancel scope encloses."""
    loop = internals.running_loop()  # None under trio
    if loop is None:
        return True
    return internals.anyio_scope_encloses(asyncio.current_task(loop))


async def wait_for_unwinds() -> None:
    """Return once every request of this event loop's thread that entered an instrumented stack
    has unwound it, however long its cancellation takes to reach the stack. For a lifespan
    shutdown handler; bound it with ``anyio.move_on_after``."""
    await inflight.wait_until_idle()
