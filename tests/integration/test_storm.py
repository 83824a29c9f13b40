"""Upload storm: 10,000 requests through real uvicorn at 64 concurrent connections against the
upload service of tests/support/upload_app.py (``read_form`` under TEST_LIMITS, so every file over 1 KiB
goes to a temporary file): good uploads, every malformed and oversized body of BAD_UPLOADS, and
clients that hang up mid-body or right after the headers. Afterwards nothing is left: no temporary
file, no extra file descriptor, every pushed callback executed, memory flat. Figures are printed."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from exitstack_otel import semconv
from tests.support.leaks import open_fds, rss_bytes, temp_files
from tests.support.otel_helpers import Sdk
from tests.support.polling import wait_until
from tests.support.servers import running_server
from tests.support.upload_app import BAD_UPLOADS, GOOD_UPLOADS, TEST_LIMITS, Upload, closed_forms, create_app

REQUESTS = 10_000
CONCURRENCY = 64
CHUNKS = 5
ON_DISK = next(upload for upload in GOOD_UPLOADS if upload.name == "files on disk")


def plan(index: int) -> tuple[str, Upload]:
    """Per 20 requests: 10 good, 6 bad (every kind in turn), 3 hang-ups mid-body (after the
    first file is on disk), 1 hang-up right after the headers."""
    slot = index % 20
    if slot < 10:
        return "good", GOOD_UPLOADS[index % len(GOOD_UPLOADS)]
    if slot < 16:
        return "bad", BAD_UPLOADS[index % len(BAD_UPLOADS)]
    if slot < 19:
        return "hang-up mid-body", ON_DISK
    return "hang-up after headers", ON_DISK


def request_head(upload: Upload) -> bytes:
    return (
        f"POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        f"Content-Type: {upload.content_type}\r\nContent-Length: {len(upload.body)}\r\n\r\n"
    ).encode()


async def send_one(port: int, kind: str, upload: Upload) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if kind == "hang-up mid-body":
            writer.write(request_head(upload) + upload.body[: len(upload.body) * 2 // 3])
        elif kind == "hang-up after headers":
            writer.write(request_head(upload))
        else:
            writer.write(request_head(upload) + upload.body)
        await writer.drain()
        if kind.startswith("hang-up"):
            return "none"
        status_line = await reader.readline()
        await reader.read()  # Connection: close: the response ends with the connection
        return status_line.split()[1].decode() if status_line else "no response"
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):  # a server may reset what it refused to read
            await writer.wait_closed()


async def storm(
    port: int, first: int, count: int, answers: Counter[tuple[str, str, str]], temp_files_seen: list[int]
) -> None:
    indices = iter(range(first, first + count))

    async def worker() -> None:
        for index in indices:
            kind, upload = plan(index)
            status = await send_one(port, kind, upload)
            expected = str(upload.status) if kind in ("good", "bad") else "none"
            answers[(kind, upload.name, "as expected" if status == expected else status)] += 1
            if index % 16 == 0:  # proves uploads really were on disk mid-storm
                temp_files_seen.append(len(temp_files(Path(tempfile.gettempdir()))))

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


@pytest.mark.slow
def test_upload_storm_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], sdk: Sdk
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # spooled uploads land here, and only here
    # sdk: its tracer provider; the app makes its meter provider around `reader`
    reader = InMemoryMetricReader()
    app = create_app(TEST_LIMITS, reader=reader, tracer_provider=sdk.tracer_provider)
    answers: Counter[tuple[str, str, str]] = Counter()
    rss: list[int] = []
    objects: list[int] = []  # Python containers alive: a leak shows here, allocator noise does not
    temp_files_seen: list[int] = []
    with running_server(app) as server:
        gc.collect()
        fds_before = open_fds()
        started = time.perf_counter()
        per_chunk = REQUESTS // CHUNKS
        for chunk in range(CHUNKS):
            asyncio.run(storm(server.port, chunk * per_chunk, per_chunk, answers, temp_files_seen))
            sdk.spans_exporter.clear()  # the test's in-memory exporter would otherwise hold every unwind span
            # the server thread closes its ends of the chunk's connections after the client: until
            # then their objects are alive, by a thousand or more on a loaded machine (a CI failure)
            wait_until(lambda: len(open_fds()) <= len(fds_before), "the chunk's connections to close")
            gc.collect()
            rss.append(rss_bytes())
            objects.append(len(gc.get_objects()))
        elapsed = time.perf_counter() - started
        # every connection is closed on the client side; wait for uvicorn to close its ends too
        wait_until(lambda: len(open_fds()) <= len(fds_before), "the last connections to close")
        fds_after = open_fds()
        left = temp_files(tmp_path)

    def total(metric: str, field: str) -> int:
        points: list[Any] = []
        data = reader.get_metrics_data()
        for resource_metrics in data.resource_metrics if data else ():
            for scope_metrics in resource_metrics.scope_metrics:
                for found in scope_metrics.metrics:
                    if found.name == metric:
                        points.extend(found.data.data_points)
        return sum(getattr(point, field) for point in points)

    pushed = total(semconv.CALLBACK_PUSHED, "value")
    executed = total(semconv.CALLBACK_DURATION, "count")
    unwinds = total(semconv.UNWIND_DURATION, "count")
    by_kind: Counter[str] = Counter()
    for (kind, _, _), count in answers.items():
        by_kind[kind] += count
    unexpected = {key: count for key, count in answers.items() if key[2] != "as expected"}

    assert sum(answers.values()) == REQUESTS
    assert unexpected == {}  # every good upload 200, every bad one its 400 or 413
    # only good forms were pushed; read_form closed the files of the others itself, and an unwind
    # with nothing on it appears nowhere
    assert unwinds == by_kind["good"]
    assert pushed == executed
    assert closed_forms(reader) == {semconv.OUTCOME_OK: by_kind["good"]}  # one close per good form
    assert max(temp_files_seen) > 0
    assert left == []
    assert sorted(fds_after.values()) == sorted(fds_before.values())
    # the first two chunks warm caches, imports and allocator arenas; after them nothing
    # accumulates: a leak of one object per request would add 6,000 here
    assert objects[-1] - objects[1] < 1_000
    assert rss[-1] - rss[1] < 32 * 2**20  # RSS also moves with fragmentation: a loose bound

    with capsys.disabled():
        rate = REQUESTS / elapsed
        print(
            f"\nupload storm: {REQUESTS} requests, {CONCURRENCY} concurrent, {elapsed:.1f} s ({rate:.0f}/s)"
        )
        print(f"  mix: {dict(sorted(by_kind.items()))}")
        print(f"  unwinds {unwinds}; callbacks pushed {pushed}, executed {executed}")
        print(f"  FormData.close run: {closed_forms(reader)}")
        print(f"  temporary files open at once, most seen: {max(temp_files_seen)}; left after: {len(left)}")
        print(f"  open fds {len(fds_before)} before, {len(fds_after)} after")
        print(f"  RSS after each {per_chunk} requests: {' '.join(f'{r / 2**20:.1f}' for r in rss)} MiB")
        print(f"  live Python objects after each: {' '.join(str(count) for count in objects)}")
