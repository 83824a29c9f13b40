"""Upload storm: 10,000 requests through real uvicorn at 64 concurrent connections, mixing good
uploads (some large enough to spill to a temporary file), malformed and oversized bodies, and
clients that hang up mid-body. Afterwards nothing is left: no temporary file, no extra file
descriptor, every pushed callback executed, resident memory flat. Figures are printed."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from exitstack_otel import ExitStackMiddleware, get_exit_stack, semconv

from .reliability_support import Sdk, serve, wait_until

REQUESTS = 10_000
CONCURRENCY = 64
CHUNKS = 5
MAX_BODY = 4 * 1024 * 1024
SPILL = 2 * 1024 * 1024  # twice Starlette's 1 MiB in-memory spool: a real temporary file
BOUNDARY = "stormboundary"


def open_fds() -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the fd listdir itself used, already closed
            found.append(os.readlink(f"/proc/self/fd/{fd}"))
    return found


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Slots:
    """A per-request resource taken before the body is read, given back by a pushed callback."""

    def __init__(self) -> None:
        self.taken = 0

    def take(self) -> None:
        self.taken += 1

    def give_back(self) -> None:
        self.taken -= 1


def storm_app(slots: Slots) -> Starlette:
    async def upload(request: Request) -> PlainTextResponse:
        stack = get_exit_stack(request)
        slots.take()
        stack.callback(slots.give_back)
        if int(request.headers.get("content-length", "0")) > MAX_BODY:
            return PlainTextResponse("too large", status_code=413)
        form = await request.form()  # malformed bodies: 400 from Starlette; hang-ups: ClientDisconnect
        stack.push_async_callback(form.close)
        size = 0
        for value in form.values():
            if isinstance(value, UploadFile):
                size += len(await value.read())
        return PlainTextResponse(str(size))

    return Starlette(routes=[Route("/upload", upload, methods=["POST"])])


def multipart(files: list[tuple[str, bytes]]) -> bytes:
    parts = []
    for name, content in files:
        parts.append(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode()
            + content
            + b"\r\n"
        )
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def request_head(length: int, content_type: str = f"multipart/form-data; boundary={BOUNDARY}") -> bytes:
    return (
        f"POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


SMALL = multipart([("a.txt", b"x" * 10_000), ("b.bin", os.urandom(2_000))])
LARGE = multipart([("big.bin", b"y" * SPILL)])
MALFORMED = (
    b"--" + BOUNDARY.encode() + b"\r\nContent-Disposition: form-data\r\n\r\nno closing boundary, no name"
)


def plan(index: int) -> str:
    """The request mix: 60 % good (1 in 12 of them spilling to disk), 10 % malformed,
    10 % oversized, 20 % hanging up mid-body (half of them mid-way through a spilled file)."""
    slot = index % 10
    if slot < 6:
        return "large" if index % 72 == 0 else "good"
    return ("malformed", "oversized", "abort", "abort_large")[slot - 6]


async def send_one(port: int, kind: str) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if kind in ("good", "large"):
            body = SMALL if kind == "good" else LARGE
            writer.write(request_head(len(body)) + body)
        elif kind == "malformed":
            writer.write(request_head(len(MALFORMED)) + MALFORMED)
        elif kind == "oversized":
            writer.write(request_head(64 * MAX_BODY) + SMALL[:1000])
        else:
            body = SMALL if kind == "abort" else LARGE
            # half the body, then hang up: the server sees http.disconnect mid-read
            writer.write(
                request_head(len(body)) + body[: len(body) // 2 + (1 if kind == "abort" else SPILL // 3)]
            )
            await writer.drain()
            return "aborted"
        await writer.drain()
        status_line = await reader.readline()
        await reader.read()  # Connection: close, so the response ends with the connection
        return status_line.split()[1].decode() if status_line else "no response"
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):  # the server may reset a connection it refused to read
            await writer.wait_closed()


async def storm(
    port: int, total: int, statuses: Counter[tuple[str, str]], temp_files_seen: list[int]
) -> None:
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < total:
            index = next_index
            next_index += 1
            kind = plan(index)
            statuses[(kind, await send_one(port, kind))] += 1
            if index % 16 == 0:  # proves spilled uploads really were on disk mid-storm
                temp_files_seen.append(sum(link.startswith(tempfile.gettempdir()) for link in open_fds()))

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


@pytest.mark.slow
def test_upload_storm_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # spilled uploads land here, and only here
    sdk = Sdk()
    slots = Slots()
    app = ExitStackMiddleware(
        storm_app(slots), tracer_provider=sdk.tracer_provider, meter_provider=sdk.meter_provider
    )
    with serve(app) as server:
        gc.collect()
        fds_before = len(open_fds())
        statuses: Counter[tuple[str, str]] = Counter()
        rss: list[int] = []
        objects: list[int] = []  # Python containers alive: a leak shows here, allocator noise does not
        temp_files_seen: list[int] = []
        started = time.perf_counter()
        for _ in range(CHUNKS):
            asyncio.run(storm(server.port, REQUESTS // CHUNKS, statuses, temp_files_seen))
            sdk.spans.clear()  # the test's in-memory exporter would otherwise hold every unwind span
            gc.collect()
            rss.append(rss_bytes())
            objects.append(len(gc.get_objects()))
        elapsed = time.perf_counter() - started
        # every connection is closed by now on the client side; wait for uvicorn to see it too
        wait_until(lambda: len(open_fds()) <= fds_before)
        fds_after = len(open_fds())
        temp_fds = [link for link in open_fds() if link.startswith(str(tmp_path))]

    pushed = sum(point.value for point in sdk.points(semconv.CALLBACK_PUSHED))
    executed = sum(point.count for point in sdk.points(semconv.CALLBACK_DURATION))
    outcomes = Counter(
        {
            point.attributes[semconv.UNWIND_OUTCOME]: point.count
            for point in sdk.points(semconv.UNWIND_DURATION)
            if point.count
        }
    )
    by_kind: Counter[str] = Counter()
    for (kind, _), count in statuses.items():
        by_kind[kind] += count

    assert sum(statuses.values()) == REQUESTS
    assert statuses[("good", "200")] == by_kind["good"]
    assert statuses[("large", "200")] == by_kind["large"]
    assert statuses[("malformed", "400")] == by_kind["malformed"]
    assert statuses[("oversized", "413")] == by_kind["oversized"]
    assert by_kind["large"] > 0
    assert by_kind["abort_large"] > 0
    assert sum(outcomes.values()) == REQUESTS  # every request was unwound, hang-ups included
    assert slots.taken == 0
    assert pushed == executed
    assert max(temp_files_seen) > 0
    assert list(tmp_path.iterdir()) == []
    assert temp_fds == []
    assert fds_after == fds_before
    # the first two chunks warm caches, imports and allocator arenas (2 MiB bodies, 1 MiB spools);
    # after them nothing accumulates: a leak of one object per request would add 6,000 here
    assert objects[-1] - objects[1] < 1_000
    assert rss[-1] - rss[1] < 32 * 2**20  # RSS also moves with fragmentation: a loose bound
    sdk.shutdown()

    with capsys.disabled():
        rate = REQUESTS / elapsed
        print(
            f"\nupload storm: {REQUESTS} requests, {CONCURRENCY} concurrent, {elapsed:.1f} s ({rate:.0f}/s)"
        )
        print(f"  mix: {dict(sorted(by_kind.items()))}")
        print(f"  unwind outcomes: {dict(sorted(outcomes.items()))}")
        print(f"  callbacks pushed {pushed}, executed {executed}")
        print(
            f"  temporary files open at once, most seen: {max(temp_files_seen)}; left after: {len(temp_fds)}"
        )
        print(f"  open fds {fds_before} before, {fds_after} after")
        print(
            f"  RSS after each {REQUESTS // CHUNKS} requests: {' '.join(f'{r / 2**20:.1f}' for r in rss)} MiB"
        )
        print(f"  live Python objects after each: {' '.join(str(count) for count in objects)}")
