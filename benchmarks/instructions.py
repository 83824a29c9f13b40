"""Instructions per request, counted by valgrind: a figure the machine's load cannot move.

On a shared machine a timing moves by a fifth from one run to the next (other processes, CPU
frequency, cache neighbours); the instructions a request executes do not. Each (variant,
callbacks) runs twice under ``valgrind --tool=callgrind``, with the same warm-up and ``requests``
more requests the second time; the difference over ``requests`` is the count of one request, with
start-up and warm-up cancelled out. The span export thread counts too: its work is the request's.

Instructions are not time (a cache miss costs a hundred of them), so the table also gives each
figure converted at the baseline's own rate: its fastest batch's microseconds over its instructions, both
from the same run. Run as ``python -m benchmarks.instructions VARIANT CALLBACKS REQUESTS`` to
make the requests alone (what valgrind runs).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

from .inprocess import call_app
from .variants import VARIANTS_BY_NAME

_ROOT = Path(__file__).resolve().parent.parent
_WARMUP = 300
_COLLECTED = re.compile(r"Collected : (\d+)")


def available() -> str | None:
    """Path of valgrind, None when it is not installed."""
    return shutil.which("valgrind")


def _requests(variant: str, callbacks: int, requests: int) -> None:
    app, sdk = VARIANTS_BY_NAME[variant].build()
    shape = VARIANTS_BY_NAME[variant].shape

    async def run() -> None:
        for _ in range(_WARMUP + requests):
            await call_app(app, callbacks, shape)

    try:
        asyncio.run(run())
        sdk.flush()
    finally:
        sdk.shutdown()


def counted_module(valgrind: str, *arguments: str) -> list[str]:
    """``python -m arguments...`` under callgrind, which reports its count on exit (``collected``)."""
    return [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-m", *arguments]


# a fixed hash seed: string hashes decide dict probe lengths, and so a few instructions
COUNTED_ENV = {**os.environ, "PYTHONHASHSEED": "0"}


def collected(what: str, returncode: int | None, stderr: str) -> int:
    """The instruction count valgrind printed as the program exited."""
    found = _COLLECTED.search(stderr)
    if found is None:
        raise RuntimeError(f"no count from valgrind for {what} ({returncode}): {stderr[-2000:]}")
    return int(found.group(1))


def _count(valgrind: str, variant: str, callbacks: int, requests: int) -> int:
    command = counted_module(valgrind, "benchmarks.instructions", variant, str(callbacks), str(requests))
    done = subprocess.run(command, cwd=_ROOT, env=COUNTED_ENV, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"valgrind failed for {variant} ({done.returncode}): {done.stderr[-2000:]}")
    return collected(variant, done.returncode, done.stderr)


def measure(
    variants: Sequence[str], callback_counts: Sequence[int], requests: int
) -> dict[tuple[str, int], float]:
    """Instructions per request for each (variant, callbacks); runs valgrind on every core."""
    valgrind = available()
    if valgrind is None:
        raise RuntimeError("valgrind is not installed (Debian: apt-get install valgrind)")
    return per_request(variants, callback_counts, requests, partial(_count, valgrind))


Counter = Callable[[str, int, int], int]
"""(variant, callbacks, requests) -> instructions of one whole run serving that many requests"""


def per_request(
    variants: Sequence[str],
    callback_counts: Sequence[int],
    requests: int,
    count: Counter,
    workers: int | None = None,
) -> dict[tuple[str, int], float]:
    """Each (variant, callbacks) counted with ``requests`` and twice as many, on ``workers`` cores
    (default: every one); the difference over ``requests`` is one request's count, what both runs
    share cancelled out. The counts do not depend on the workers, only the wall time does."""
    jobs = [
        (name, callbacks, total)
        for name in variants
        for callbacks in callback_counts
        for total in (requests, 2 * requests)
    ]
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        counts = list(pool.map(lambda job: count(*job), jobs))
    found = dict(zip(jobs, counts, strict=True))
    return {
        (name, callbacks): (found[(name, callbacks, 2 * requests)] - found[(name, callbacks, requests)])
        / requests
        for name in variants
        for callbacks in callback_counts
    }


def table(
    variants: Sequence[str],
    callback_counts: Sequence[int],
    instructions: Mapping[tuple[str, int], float],
    in_process: Mapping[tuple[str, int], float],
    baseline: str,
) -> list[str]:
    lines = [
        "",
        "Instructions per request (valgrind, deterministic), and the same converted at the "
        f"{baseline} baseline's rate in this run (its fastest batch's us / its instructions)",
        "",
        "| variant | callbacks | instructions | x base | added | ~added us |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for callbacks in callback_counts:
        base = instructions[(baseline, callbacks)]
        rate = in_process[(baseline, callbacks)] / base if (baseline, callbacks) in in_process else None
        for name in variants:
            count = instructions[(name, callbacks)]
            added = count - base
            estimate = f"{added * rate:+.1f}" if rate is not None else "-"
            lines.append(
                f"| {name} | {callbacks} | {count:,.0f} | {count / base:.2f} | {added:+,.0f} | {estimate} |"
            )
    return lines


if __name__ == "__main__":
    _requests(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
