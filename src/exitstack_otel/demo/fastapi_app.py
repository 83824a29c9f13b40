"""The demo as a FastAPI app: the same routes, with cleanup in dependencies that ``yield``.

FastAPI keeps its own stacks (``fastapi_middleware_astack`` for uploads, ``fastapi_inner_astack``
for dependencies) innermost, so our middleware sits outside them under a key of its own and
carries the audit flush; ``instrument_fastapi`` reports FastAPI's own stacks beside it.
"""

# no `from __future__ import annotations`: FastAPI reads these annotations at runtime, and the
# dependencies are closures it could not resolve from strings
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, FastAPI, File, Form, UploadFile, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse
from opentelemetry import metrics, trace
from starlette.requests import HTTPConnection

from ..fastapi import instrument_fastapi
from ..middleware import ExitStackMiddleware, get_exit_stack
from .audit import AuditLog
from .pool import Connection, ConnectionPool, ResultCursor
from .settings import DemoSettings

DEMO_STACK_KEY = "exitstack_demo_astack"


def create_fastapi_app(
    settings: DemoSettings | None = None,
    *,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
) -> FastAPI:
    settings = settings or DemoSettings()
    pool = ConnectionPool(settings.pool_size)

    def audited(connection: HTTPConnection) -> None:
        log = AuditLog.for_request(connection.url.path, connection.query_params, settings.slow_seconds)
        get_exit_stack(connection, DEMO_STACK_KEY).push_async_callback(log.flush)

    async def leased_connection() -> AsyncIterator[Connection]:
        connection = await pool.acquire()
        try:
            yield connection
        finally:
            await pool.release(connection)

    async def open_cursor() -> AsyncIterator[ResultCursor]:
        cursor = await pool.cursor(settings.stream_rows)
        try:
            yield cursor
        finally:
            await cursor.close()

    app = FastAPI(title="exitstack-otel demo", dependencies=[Depends(audited)])
    app.add_middleware(
        ExitStackMiddleware,
        scope_key=DEMO_STACK_KEY,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
    )
    instrument_fastapi(app, tracer_provider=tracer_provider, meter_provider=meter_provider)
    app.state.pool = pool

    @app.get("/healthz")
    async def health() -> dict[str, object]:
        return {"status": "ok", "pool_in_use": pool.in_use, "pool_size": pool.size}

    @app.post("/upload")
    async def upload(
        file: Annotated[UploadFile, File()], note: Annotated[str, Form()] = ""
    ) -> dict[str, int]:
        return {"files": 1, "bytes": len(await file.read())}

    @app.get("/pool")
    async def query(connection: Annotated[Connection, Depends(leased_connection)]) -> list[dict[str, int]]:
        return await connection.query(3)

    @app.get("/stream")
    async def stream(cursor: Annotated[ResultCursor, Depends(open_cursor)]) -> StreamingResponse:
        return StreamingResponse(cursor.rows(), media_type="text/csv")

    @app.websocket("/ws")
    async def session(
        websocket: WebSocket, connection: Annotated[Connection, Depends(leased_connection)]
    ) -> None:
        await websocket.accept()
        try:
            while True:
                text = await websocket.receive_text()
                await websocket.send_json({"echo": text, "rows": await connection.query()})
        except WebSocketDisconnect:
            pass

    return app
