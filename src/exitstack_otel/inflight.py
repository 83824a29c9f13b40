"""How many requests are inside an instrumented stack, per thread, and a way to wait for none.

``ExitStackMiddleware`` and the FastAPI instrumentation count a request from before its app runs
until its stack has unwound; ``wait_for_unwinds()`` waits for the count to reach zero. Counting
the requests, not the unwinds, is what makes it reliable at shutdown: a cancelled request may take
any number of loop turns (a task group to leave, an endpoint's ``finally`` that awaits) before its
unwind starts, and until then there is no unwind to wait for.

One count per thread: an event loop (asyncio or trio) runs in one thread, and a thread runs one
loop at a time, so the count of the running loop's thread is the count of that loop's requests.
The request path pays a thread-local load, an add and a subtract on an object made once per
thread, and allocates nothing (its cost is in benchmarks/RESULTS.md).
"""

from __future__ import annotations

import threading
from contextlib import suppress

import anyio


class InFlight:
    """One thread's requests in flight; ``entered()`` returns it for the matching ``left()``."""

    __slots__ = ("count", "waiters")

    def __init__(self) -> None:
        self.count = 0
        self.waiters: list[anyio.Event] = []
        """only while someone waits: then the last request to leave wakes them all"""

    def left(self) -> None:
        self.count -= 1
        if self.waiters and not self.count:
            self.wake_waiters()

    def wake_waiters(self) -> None:
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            # a waiter whose event loop is gone cannot be woken, and must not break a request
            with suppress(Exception):
                waiter.set()

    async def wait_until_idle(self) -> None:
        while self.count > 0:
            waiter = anyio.Event()
            self.waiters.append(waiter)
            try:
                await waiter.wait()
            finally:  # a waiter that gave up (its timeout, its loop's end) is no longer woken
                with suppress(ValueError):
                    self.waiters.remove(waiter)


threads = threading.local()
"""``threads.in_flight``: the calling thread's ``InFlight``, once it has one (``this_thread()``).
A plain threading.local read once per request: its attribute loads cost several times a plain
object's, so the counting happens on the InFlight object it holds. ``ExitStackMiddleware`` writes
``entered()`` and ``left()`` out, a Python call fewer each per request."""


def this_thread() -> InFlight:
    try:
        in_flight: InFlight = threads.in_flight
    except AttributeError:  # the thread's first request
        in_flight = threads.in_flight = InFlight()
    return in_flight


def entered() -> InFlight:
    """Count one more request in this thread; call ``left()`` on the result once it has unwound."""
    try:
        in_flight: InFlight = threads.in_flight
    except AttributeError:  # the thread's first request
        in_flight = threads.in_flight = InFlight()
    in_flight.count += 1
    return in_flight


def requests_in_flight() -> int:
    """The calling thread's requests that entered an instrumented stack and have not unwound."""
    return this_thread().count


async def wait_until_idle() -> None:
    """Return once this thread has no request in flight (at once if it has none)."""
    await this_thread().wait_until_idle()
