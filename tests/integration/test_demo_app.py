from __future__ import annotations

import json

import anyio
import httpx
import pytest
from opentelemetry.trace import StatusCode
from websockets.sync.client import connect as ws_connect

from exitstack_otel import semconv
from exitstack_otel.demo.app import create_app
from exitstack_otel.demo.fastapi_app import DEMO_STACK_KEY, create_fastapi_app
from exitstack_otel.demo.pool import ConnectionPool
from exitstack_otel.demo.report import CallbackRow, CleanupReport
from exitstack_otel.demo.settings import DemoSettings
from exitstack_otel.demo.traffic import LARGE_UPLOAD_BYTES
from exitstack_otel.middleware import DEFAULT_STACK_NAME
from tests.support.demo_helpers import RunningDemo, serve_in_thread

pytestmark = pytest.mark.anyio


def row(report: CleanupReport | None, callback: str, stack: str = DEFAULT_STACK_NAME) -> CallbackRow:
    assert report is not None
    found = {(r.stack, r.callback): r for r in report.rows}
    assert (stack, callback) in found, f"no {callback} on {stack}; rows: {sorted(found)}"
    return found[(stack, callback)]


def pool_of(demo: RunningDemo) -> ConnectionPool:
    pool = demo.app.state.pool  # type: ignore[attr-defined]
    assert isinstance(pool, ConnectionPool)
    return pool


def websocket_session(url: str, messages: int) -> list[dict[str, object]]:
    replies = []
    with ws_connect(url.replace("http://", "ws://") + "/ws") as websocket:
        for index in range(messages):
            websocket.send(f"hello {index}")
            replies.append(json.loads(websocket.recv(timeout=10)))
    return replies


async def test_upload_form_is_closed_by_the_stack() -> None:
    with serve_in_thread(create_app) as demo:
        async with httpx.AsyncClient(base_url=demo.url) as client:
            # the second one is past Starlette's 1 MiB spool: a temporary file on disk
            files = {"a": ("a.bin", b"x" * 1000), "b": ("b.bin", b"y" * LARGE_UPLOAD_BYTES)}
            response = await client.post("/upload", data={"note": "n"}, files=files)
    assert response.status_code == 200
    assert response.json() == {"files": 2, "bytes": 1000 + LARGE_UPLOAD_BYTES}
    closed = row(demo.report, "FormData.close")
    assert (closed.pushed, closed.executed, closed.failed) == (1, 1, 0)
    assert closed.kinds == {semconv.KIND_ASYNC_CALLBACK}


async def test_every_pooled_connection_goes_back_even_when_requests_outnumber_the_pool() -> None:
    requests = 12
    with serve_in_thread(create_app, settings=DemoSettings(pool_size=2)) as demo:
        async with httpx.AsyncClient(base_url=demo.url) as client, anyio.create_task_group() as tg:
            for _ in range(requests):
                tg.start_soon(client.get, "/pool")
    pool = pool_of(demo)
    assert (pool.acquired, pool.released, pool.in_use) == (requests, requests, 0)
    released = row(demo.report, "ConnectionPool.release")
    assert (released.pushed, released.executed, released.never_ran) == (requests, requests, 0)


async def test_stream_cursor_is_closed_only_after_the_last_row() -> None:
    # ResultCursor refuses reads once closed, so a cleanup that ran early would cut the stream short
    rows = 400
    with serve_in_thread(create_app, settings=DemoSettings(stream_rows=rows)) as demo:
        async with httpx.AsyncClient(base_url=demo.url) as client:
            response = await client.get("/stream")
    assert response.status_code == 200
    assert len(response.text.splitlines()) == rows
    closed = row(demo.report, "ResultCursor.close")
    assert (closed.executed, closed.failed) == (1, 0)
    assert pool_of(demo).in_use == 0


async def test_websocket_session_releases_its_connection_when_it_ends() -> None:
    with serve_in_thread(create_app) as demo:
        replies = await anyio.to_thread.run_sync(websocket_session, demo.url, 3)
    assert [reply["echo"] for reply in replies] == ["hello 0", "hello 1", "hello 2"]
    assert row(demo.report, "ConnectionPool.release").executed == 1
    recorded = row(demo.report, "SessionStats.record")
    assert (recorded.executed, recorded.kinds) == (1, {semconv.KIND_CALLBACK})
    assert pool_of(demo).in_use == 0


async def test_a_failing_audit_flush_is_recorded_and_the_other_cleanup_still_runs() -> None:
    with serve_in_thread(create_app) as demo:
        async with httpx.AsyncClient(base_url=demo.url) as client:
            # uvicorn drops the connection after a failing cleanup: do not reuse it
            failing = await client.get("/pool", params={"fail": "1"}, headers={"Connection": "close"})
            fine = await client.get("/pool")
    assert (failing.status_code, fine.status_code) == (200, 200)  # the cleanup fails after the response
    flush = row(demo.report, "AuditLog.flush")
    assert (flush.executed, flush.failed) == (2, 1)
    assert flush.error_types == {"exitstack_otel.demo.audit.AuditFlushError": 1}
    assert row(demo.report, "ConnectionPool.release").executed == 2
    assert pool_of(demo).in_use == 0
    failed_spans = [
        span for span in demo.spans.get_finished_spans() if span.name == "exitstack.callback AuditLog.flush"
    ]
    assert len(failed_spans) == 1
    assert failed_spans[0].status.status_code is StatusCode.ERROR


async def test_a_slow_audit_flush_gets_a_span_of_its_own() -> None:
    # spans for slow callbacks start at the default threshold of 0.1 s
    with serve_in_thread(create_app, settings=DemoSettings(slow_seconds=0.15)) as demo:
        async with httpx.AsyncClient(base_url=demo.url) as client:
            await client.get("/pool", params={"slow": "1"})
            await client.get("/pool")
    spans = [
        span for span in demo.spans.get_finished_spans() if span.name == "exitstack.callback AuditLog.flush"
    ]
    assert len(spans) == 1
    assert spans[0].attributes is not None
    assert spans[0].attributes[semconv.CALLBACK_OUTCOME] == semconv.OUTCOME_OK
    flush = row(demo.report, "AuditLog.flush")
    assert (flush.executed, flush.failed) == (2, 0)
    p99 = flush.quantiles()["p99"]
    assert p99 is not None
    assert p99 >= 0.1


async def test_fastapi_variant_serves_every_route_and_cleans_up() -> None:
    with serve_in_thread(create_fastapi_app, settings=DemoSettings(stream_rows=50)) as demo:
        async with httpx.AsyncClient(base_url=demo.url) as client:
            upload = await client.post("/upload", data={"note": "n"}, files={"file": ("f.bin", b"z" * 10)})
            query = await client.get("/pool", params={"fail": "1"}, headers={"Connection": "close"})
            stream = await client.get("/stream")
        replies = await anyio.to_thread.run_sync(websocket_session, demo.url, 2)
    assert upload.json() == {"files": 1, "bytes": 10}
    assert query.status_code == 200
    assert len(query.json()) == 3
    assert len(stream.text.splitlines()) == 50
    assert len(replies) == 2
    flush = row(demo.report, "AuditLog.flush", stack=DEMO_STACK_KEY)
    assert (flush.pushed, flush.executed, flush.failed) == (4, 4, 1)
    pool = pool_of(demo)
    assert pool.acquired == pool.released == 3  # /pool, /stream and /ws leased one each through `yield`
    assert pool.in_use == 0
    # instrument_fastapi makes FastAPI's own stacks visible: the upload's close, the `yield` teardowns
    files = row(demo.report, "FormData.close", stack="fastapi_middleware_astack")
    assert (files.pushed, files.executed, files.failed) == (1, 1, 0)
    leases = row(demo.report, "create_fastapi_app.<locals>.leased_connection", stack="fastapi_inner_astack")
    assert (leases.pushed, leases.executed, leases.failed) == (2, 2, 0)  # /pool and /ws
    cursors = row(demo.report, "create_fastapi_app.<locals>.open_cursor", stack="fastapi_inner_astack")
    assert (cursors.pushed, cursors.executed, cursors.failed) == (1, 1, 0)
