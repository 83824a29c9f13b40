"""Unwind a request's stack to the end, whatever cancels the task meanwhile.

anyio's shielded cancel scope holds off anyio and trio cancellation, but not asyncio's native
``Task.cancel()`` (uvicorn's graceful-shutdown timeout, ``asyncio.wait_for``, a failing sibling in
a ``TaskGroup``): that throws ``CancelledError`` into whatever the task awaits, a cleanup included.
On asyncio an unwind that will await therefore runs in a task of its own, and the caller waits
for it through any number of cancellations before passing the first one on. That task runs in a
copy of the request's context: callbacks see the endpoint's context variables, as before, but
variables they set themselves no longer leak out to the middleware's caller.

Nothing survives the end of the event loop, though: ``asyncio.run`` cancels every task left,
cleanups included. uvicorn ends its loop right after cancelling the requests that outlived
``timeout_graceful_shutdown``, unless the app's lifespan shutdown keeps it busy; awaiting
``wait_for_unwinds()`` there gives those requests' cleanups the time to finish.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import NoReturn

import anyio
import anyio.lowlevel

from .stack import InstrumentedAsyncExitStack

ExcDetails = tuple[type[BaseException] | None, BaseException | None, TracebackType | None]

# strong references too: the event loop keeps only weak ones to running tasks
_unwind_tasks: set[asyncio.Task[tuple[bool, BaseException | None]]] = set()


async def wait_for_unwinds() -> None:
    """Return once the unwinds running in tasks of their own have finished. For a lifespan
    shutdown handler; bound it with ``anyio.move_on_after``."""
    await anyio.lowlevel.checkpoint()  # requests cancelled just now start their unwinds first
    pending = [task for task in _unwind_tasks if not task.done()]
    if pending:
        await asyncio.wait(pending)


async def unwind_shielded(stack: InstrumentedAsyncExitStack, exc: BaseException | None) -> bool:
    """``stack.__aexit__`` for ``exc`` run to completion; a cancellation of the caller comes after."""
    exc_details: ExcDetails = (None, None, None) if exc is None else (type(exc), exc, exc.__traceback__)
    if not stack.awaits_on_exit:
        # Only sync callbacks (or none, as for most requests): the unwind never awaits, so no
        # cancellation can land in it, and the shield (about 3 us on asyncio) would guard nothing.
        return bool(await stack.__aexit__(*exc_details))
    with anyio.CancelScope(shield=True):
        if _on_asyncio():
            suppressed = await _outlast_cancellation(stack, exc_details)
        else:
            suppressed = bool(await stack.__aexit__(*exc_details))
    return suppressed


def _on_asyncio() -> bool:
    try:
        return asyncio.current_task() is not None
    except RuntimeError:  # no asyncio loop running: trio
        return False


async def _outlast_cancellation(stack: InstrumentedAsyncExitStack, exc_details: ExcDetails) -> bool:
    async def unwind() -> tuple[bool, BaseException | None]:
        try:
            return bool(await stack.__aexit__(*exc_details)), None
        except BaseException as escaped:  # handed to the caller, who re-raises it
            return False, escaped

    task = asyncio.create_task(unwind())
    _unwind_tasks.add(task)
    task.add_done_callback(_unwind_tasks.discard)
    cancellation: asyncio.CancelledError | None = None
    while not task.done():
        try:
            # shield(): a cancellation of this task must not be passed on to the unwind's
            await asyncio.shield(task)
        except asyncio.CancelledError as cancelled:
            cancellation = cancellation or cancelled
    suppressed, escaped = task.result()  # raises only if the event loop itself cancelled the unwind
    if escaped is not None:
        _reraise(escaped)
    if cancellation is not None:
        _reraise(cancellation)
    return suppressed


def _reraise(exc: BaseException) -> NoReturn:
    # a bare "raise exc" here would chain it to whatever the caller is handling
    context = exc.__context__
    try:
        raise exc
    except BaseException:
        exc.__context__ = context
        raise
