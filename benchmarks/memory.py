"""Resident memory and ``tracemalloc`` growth over many requests, one fresh process per variant.

Run as ``python -m benchmarks.memory VARIANT CALLBACKS REQUESTS``: prints one JSON line.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

from .inprocess import call_app
from .variants import VARIANTS_BY_NAME, Sdk

_PAGE = os.sysconf("SC_PAGE_SIZE")
_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class MemoryGrowth:
    variant: str
    callbacks: int
    requests: int
    rss_before_kib: int
    rss_halfway_kib: int
    rss_after_kib: int
    traced_growth_kib: float
    traced_second_half_growth_kib: float
    """a leak keeps growing; the allocator's one-off high-water mark does not"""

    @property
    def rss_growth_kib(self) -> int:
        return self.rss_after_kib - self.rss_before_kib

    @property
    def rss_second_half_growth_kib(self) -> int:
        return self.rss_after_kib - self.rss_halfway_kib


def _rss_kib() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE // 1024


async def _requests(variant: str, callbacks: int, requests: int, warmup: int) -> MemoryGrowth:
    app, sdk = VARIANTS_BY_NAME[variant].build()
    shape = VARIANTS_BY_NAME[variant].shape
    try:
        # the warm-up fills every cache and lets the span queue reach its steady state
        for _ in range(warmup):
            await call_app(app, callbacks, shape)
        tracemalloc.start()
        snapshots = [_snapshot(sdk)]
        for half in (requests // 2, requests - requests // 2):
            for _ in range(half):
                await call_app(app, callbacks, shape)
            snapshots.append(_snapshot(sdk))
        tracemalloc.stop()
    finally:
        sdk.shutdown()
    (rss_before, traced_before), (rss_halfway, traced_halfway), (rss_after, traced_after) = snapshots
    return MemoryGrowth(
        variant,
        callbacks,
        requests,
        rss_before,
        rss_halfway,
        rss_after,
        (traced_after - traced_before) / 1024,
        (traced_after - traced_halfway) / 1024,
    )


def _snapshot(sdk: Sdk) -> tuple[int, int]:
    # queued spans are not growth: every snapshot is taken with the span queue drained
    sdk.flush()
    gc.collect()
    return _rss_kib(), tracemalloc.get_traced_memory()[0]


def measure(variant: str, callbacks: int, requests: int) -> MemoryGrowth:
    """Runs the measurement in a child process so that no variant inherits another's heap."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", variant, str(callbacks), str(requests)],
        cwd=_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return MemoryGrowth(**json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    variant, callbacks, requests = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    growth = asyncio.run(_requests(variant, callbacks, requests, warmup=min(5000, requests)))
    print(json.dumps(growth.__dict__))


if __name__ == "__main__":
    main()
