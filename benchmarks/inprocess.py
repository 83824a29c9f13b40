"""Calls each variant's ASGI app in a tight loop, variants interleaved so that drift cancels."""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .variants import VARIANTS_BY_NAME, Sdk

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message

_SCOPE_TEMPLATE = {
    "type": "http",
    "asgi": {"version": "3.0", "spec_version": "2.3"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "root_path": "",
    "query_string": b"",
    # what httpx sends by default: a typical API client
    "headers": [
        (b"host", b"127.0.0.1:8000"),
        (b"accept", b"*/*"),
        (b"accept-encoding", b"gzip, deflate"),
        (b"connection", b"keep-alive"),
        (b"user-agent", b"python-httpx/0.28.1"),
    ],
    "client": ("127.0.0.1", 40000),
    "server": ("127.0.0.1", 8000),
}


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


class _Sink:
    __slots__ = ("status",)

    def __init__(self) -> None:
        self.status = 0

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]


async def call_app(app: ASGIApp, callbacks: int) -> int:
    """One request; returns its response status."""
    path = f"/cb/{callbacks}"
    scope = {**_SCOPE_TEMPLATE, "path": path, "raw_path": path.encode()}
    sink = _Sink()
    await app(scope, _receive, sink)
    # a server's event loop turns between two requests (it waits for the next one): what the
    # request left for a later turn runs, in every variant, as it would in a server
    await asyncio.sleep(0)
    return sink.status


async def _time_batch(app: ASGIApp, sdk: Sdk, callbacks: int, requests: int) -> float:
    """Microseconds per request over one batch, the export of its own spans included."""
    # neither garbage nor queued spans of the previous batch may be paid for by this one
    gc.collect()
    sdk.flush()
    start = time.perf_counter_ns()
    for _ in range(requests):
        await call_app(app, callbacks)
    sdk.flush()
    return (time.perf_counter_ns() - start) / requests / 1000


async def _measure(
    variants: Sequence[str], callback_counts: Sequence[int], requests: int, repeats: int, warmup: int
) -> dict[tuple[str, int], list[float]]:
    built = {name: VARIANTS_BY_NAME[name].build() for name in variants}
    try:
        for name, (app, sdk) in built.items():
            for callbacks in callback_counts:
                status = await call_app(app, callbacks)
                if status != 200:
                    raise RuntimeError(f"{name} answered {status} for {callbacks} callbacks")
                await _time_batch(app, sdk, callbacks, warmup)
        samples: dict[tuple[str, int], list[float]] = {(n, c): [] for n in variants for c in callback_counts}
        for repeat in range(repeats):
            # rotate the order each round: no variant always runs right after the same neighbour
            order = list(variants[repeat % len(variants) :]) + list(variants[: repeat % len(variants)])
            for callbacks in callback_counts:
                for name in order:
                    app, sdk = built[name]
                    samples[(name, callbacks)].append(await _time_batch(app, sdk, callbacks, requests))
        return samples
    finally:
        for _, sdk in built.values():
            sdk.shutdown()


def run(
    variants: Sequence[str],
    callback_counts: Sequence[int],
    *,
    requests: int,
    repeats: int,
    warmup: int,
) -> dict[tuple[str, int], float]:
    """Median microseconds per request for each (variant, callbacks)."""
    samples = asyncio.run(_measure(variants, callback_counts, requests, repeats, warmup))
    return {key: statistics.median(values) for key, values in samples.items()}
