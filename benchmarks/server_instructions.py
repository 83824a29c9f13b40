"""Instructions a real uvicorn server spends per request, counted by valgrind.

What ``wrk`` measures, requests per second, is what users care about, and on a shared machine it
moves by a fifth between runs. A server's throughput is bound by the work it does per request,
and that work can be counted: the server runs under ``valgrind --tool=callgrind`` while a client
outside it sends requests one after another on one keep-alive connection; it is run twice, with
``requests`` more requests the second time, and the difference over ``requests`` is one request's
count (uvicorn, h11 or httptools, Starlette, the stack), start-up and shutdown cancelled out.
The baseline's count over a variant's is the throughput the variant would keep where the server's
CPU is the limit (what the wrk target asks). uvicorn's own timer ticks while the client waits add
a few hundred instructions per request to both runs' difference alike.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from .instructions import COUNTED_ENV, available, collected, counted_module, per_request
from .server import DEFAULT_SHAPE, SHAPES, missing
from .variants import VARIANTS_BY_NAME
from .wrk import free_port, wait_until_serving

_ROOT = Path(__file__).resolve().parent.parent
_WARMUP = 200
STARTUP_SECONDS = 180.0  # imports under valgrind run about fifty times slower


def exchange(connection: socket.socket, request: bytes) -> None:
    """One keep-alive request, its whole response read."""
    connection.sendall(request)
    received = b""
    while b"\r\n\r\n" not in received:
        received += _recv(connection)
    head, _, body = received.partition(b"\r\n\r\n")
    found = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    if not head.startswith(b"HTTP/1.1 200") or found is None:
        raise RuntimeError(f"unexpected response: {head[:200]!r}")
    while len(body) < int(found.group(1)):
        body += _recv(connection)


def _recv(connection: socket.socket) -> bytes:
    chunk = connection.recv(65536)
    if not chunk:
        raise RuntimeError("the server closed the connection")
    return chunk


def count(
    valgrind: str,
    variant: str,
    callbacks: int,
    requests: int,
    *,
    shape: str = DEFAULT_SHAPE,
    startup_seconds: float = STARTUP_SECONDS,
    warmup: int = _WARMUP,
) -> int:
    """Instructions the server executed from start to exit, serving ``warmup + requests``."""
    port = free_port()
    request = VARIANTS_BY_NAME[variant].shape.http(callbacks)
    process = subprocess.Popen(
        counted_module(valgrind, "benchmarks.server", variant, str(port), shape),
        cwd=_ROOT,
        env=COUNTED_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_serving(port, process, timeout=startup_seconds)
        with socket.create_connection(("127.0.0.1", port)) as connection:
            for _ in range(warmup + requests):
                exchange(connection, request)
        process.send_signal(signal.SIGINT)  # uvicorn's own graceful exit; valgrind then reports
        _, stderr = process.communicate(timeout=startup_seconds)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return collected(variant, process.returncode, stderr)


def measure(
    variants: Sequence[str],
    callback_counts: Sequence[int],
    requests: int,
    *,
    shape: str = DEFAULT_SHAPE,
    workers: int | None = None,
    startup_seconds: float = STARTUP_SECONDS,
    warmup: int = _WARMUP,
) -> dict[tuple[str, int], float]:
    """Server instructions per request for each (variant, callbacks), every server in ``shape``;
    valgrind on ``workers`` cores (default: every one). ``startup_seconds`` bounds the server's
    start and its exit."""
    valgrind = available()
    if valgrind is None:
        raise RuntimeError("valgrind is not installed (Debian: apt-get install valgrind)")
    unavailable = missing(shape)
    if unavailable:
        raise RuntimeError(f"uvicorn's {shape} shape needs {', '.join(unavailable)}")
    counter = partial(count, valgrind, shape=shape, startup_seconds=startup_seconds, warmup=warmup)
    return per_request(variants, callback_counts, requests, counter, workers)


def table(
    variants: Sequence[str],
    callback_counts: Sequence[int],
    instructions: dict[tuple[str, int], float],
    baseline: str,
    shape: str = DEFAULT_SHAPE,
) -> list[str]:
    loop, http, _ = SHAPES[shape]
    lines = [
        "",
        f"uvicorn ({http} on {loop}) under valgrind: the server's instructions per request (one keep-alive "
        "client), and the throughput that leaves where the server's CPU is the limit "
        f"({baseline}'s count / the variant's)",
        "",
        "| variant | callbacks | server instructions | added | throughput kept |",
        "|---|---:|---:|---:|---:|",
    ]
    for callbacks in callback_counts:
        base = instructions[(baseline, callbacks)]
        for name in variants:
            found = instructions[(name, callbacks)]
            lines.append(
                f"| {name} | {callbacks} | {found:,.0f} | {found - base:+,.0f} | {base / found:.2f} |"
            )
    return lines
