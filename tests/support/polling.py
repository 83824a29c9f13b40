"""Waiting for what another thread or process makes true: the one polling helper of the tests.

A test polls only where nothing can tell it the moment (a server's cleanup after the response it
already sent, a child process's port, the descriptors of another process). The timeout is a
bound for a loaded machine that fails the test with ``why``; it never measures anything.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# seconds; generous bounds for a loaded machine, never measurements
TIMEOUT = 30.0
# seconds between two looks: short next to any timeout, long enough to leave the CPU to the others
INTERVAL = 0.01


def wait_until(
    predicate: Callable[[], object], why: str, timeout: float = TIMEOUT, interval: float = INTERVAL
) -> None:
    """Return once ``predicate()`` is true; fail with ``why`` after ``timeout`` seconds.

    ``predicate`` may raise to give up early (a server thread that died, a process that exited).
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {why}")
        time.sleep(interval)


def wait_for(
    read: Callable[[], T | None], why: str, timeout: float = TIMEOUT, interval: float = INTERVAL
) -> T:
    """The first reading that is not None; fail with ``why`` after ``timeout`` seconds."""
    found: list[T] = []

    def ready() -> bool:
        reading = read()
        if reading is not None:
            found.append(reading)
        return bool(found)

    wait_until(ready, why, timeout, interval)
    return found[0]


def last_reading(read: Callable[[], T], done: Callable[[T], bool], timeout: float = TIMEOUT) -> T:
    """Read until ``done(reading)`` holds, and return that reading; the last one after ``timeout``.

    For tests that assert on the reading itself, so that a failure shows what was left.
    """
    deadline = time.monotonic() + timeout
    while True:
        reading = read()
        if done(reading) or time.monotonic() > deadline:
            return reading
        time.sleep(INTERVAL)
