"""A clock that stands still until the test moves it, for durations that do not depend on the machine."""

from __future__ import annotations


class SteppedClock:
    """Stands in for ``time.perf_counter``, which the stack reads at every callback's start and end:
    a callback lasts exactly what it ``advance``s, a slow one without waiting, a quick one 0 s."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
