"""Calls each variant's ASGI app in a tight loop, variants interleaved so that drift cancels."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .shapes import GET_CALLBACKS, RequestShape
from .variants import VARIANTS_BY_NAME, Sdk

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message

_ROOT = Path(__file__).resolve().parent.parent


class _Sink:
    __slots__ = ("status",)

    def __init__(self) -> None:
        self.status = 0

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]


async def call_app(app: ASGIApp, callbacks: int, shape: RequestShape = GET_CALLBACKS) -> int:
    """One request; returns its response status. What the shape says the app raises is caught."""
    sink = _Sink()
    # not contextlib.suppress: that is an object and two calls per request, in every variant
    try:  # noqa: SIM105
        await app(shape.scope(callbacks), shape.receive, sink)
    except shape.raises:
        pass
    # a server's event loop turns between two requests (it waits for the next one): what the
    # request left for a later turn runs, in every variant, as it would in a server
    await asyncio.sleep(0)
    return sink.status


async def _time_batch(app: ASGIApp, sdk: Sdk, callbacks: int, requests: int, shape: RequestShape) -> float:
    """Microseconds per request over one batch, the export of its own spans included."""
    # neither garbage nor queued spans of the previous batch may be paid for by this one
    gc.collect()
    sdk.flush()
    start = time.perf_counter_ns()
    for _ in range(requests):
        await call_app(app, callbacks, shape)
    sdk.flush()
    return (time.perf_counter_ns() - start) / requests / 1000


async def _measure(
    variants: Sequence[str], callback_counts: Sequence[int], requests: int, repeats: int, warmup: int
) -> dict[tuple[str, int], list[float]]:
    built = {name: (*VARIANTS_BY_NAME[name].build(), VARIANTS_BY_NAME[name].shape) for name in variants}
    try:
        for name, (app, sdk, shape) in built.items():
            for callbacks in callback_counts:
                status = await call_app(app, callbacks, shape)
                if status != shape.status:
                    raise RuntimeError(f"{name} answered {status} for {callbacks} callbacks")
                await _time_batch(app, sdk, callbacks, warmup, shape)
        samples: dict[tuple[str, int], list[float]] = {(n, c): [] for n in variants for c in callback_counts}
        for repeat in range(repeats):
            # rotate the order each round: no variant always runs right after the same neighbour
            order = list(variants[repeat % len(variants) :]) + list(variants[: repeat % len(variants)])
            for callbacks in callback_counts:
                for name in order:
                    app, sdk, shape = built[name]
                    sample = await _time_batch(app, sdk, callbacks, requests, shape)
                    samples[(name, callbacks)].append(sample)
        return samples
    finally:
        for _, sdk, _ in built.values():
            sdk.shutdown()


def run(
    variants: Sequence[str],
    callback_counts: Sequence[int],
    *,
    requests: int,
    repeats: int,
    warmup: int,
) -> dict[tuple[str, int], float]:
    """Microseconds per request for each (variant, callbacks): its fastest batch. The machine's
    other load only ever adds time, so the fastest batch is the one it disturbed least (a median
    moved by half when other test suites ran beside it)."""
    samples = asyncio.run(_measure(variants, callback_counts, requests, repeats, warmup))
    return {key: min(values) for key, values in samples.items()}


def run_isolated(
    variants: Sequence[str], callbacks: int, *, requests: int, repeats: int, warmup: int
) -> dict[tuple[str, int], float]:
    """As ``run``, one fresh process per variant, one after the other: for variants that must not
    share a process. Not interleaved, so drift between the processes is not spread."""
    found = {}
    for name in variants:
        arguments = [name, str(callbacks), str(requests), str(repeats), str(warmup)]
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.inprocess", *arguments],
            cwd=_ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        found[(name, callbacks)] = float(done.stdout.strip().splitlines()[-1])
    return found


if __name__ == "__main__":
    name, callbacks, requests, repeats, warmup = sys.argv[1], *map(int, sys.argv[2:6])
    print(run([name], [callbacks], requests=requests, repeats=repeats, warmup=warmup)[(name, callbacks)])
