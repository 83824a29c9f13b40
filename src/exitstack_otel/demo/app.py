"""The demo Starlette service: every route leaves cleanup on the request's exit stack."""

from __future__ import annotations

from opentelemetry import metrics, trace
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from ..forms import read_form
from ..middleware import ExitStackMiddleware, get_exit_stack
from .audit import AuditLog
from .pool import ConnectionPool
from .settings import DemoSettings


class SessionStats:
    """What a websocket session did, recorded by a plain (sync) callback when it ends."""

    def __init__(self) -> None:
        self.messages = 0
        self.ended = False

    def record(self) -> None:
        self.ended = True


def create_app(
    settings: DemoSettings | None = None,
    *,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
) -> Starlette:
    settings = settings or DemoSettings()
    pool = ConnectionPool(settings.pool_size)

    def audit(connection: HTTPConnection, route: str) -> None:
        # pushed first, so it runs last: after every other cleanup of the request
        log = AuditLog.for_request(route, connection.query_params, settings.slow_seconds)
        get_exit_stack(connection).push_async_callback(log.flush)

    async def upload(request: Request) -> Response:
        audit(request, "/upload")
        form = await read_form(request)  # closed by the stack once the response has been sent
        sizes = [len(await item.read()) for item in form.values() if isinstance(item, UploadFile)]
        return JSONResponse({"files": len(sizes), "bytes": sum(sizes)})

    async def query(request: Request) -> Response:
        audit(request, "/pool")
        connection = await pool.acquire()
        get_exit_stack(request).push_async_callback(pool.release, connection)
        return JSONResponse(await connection.query(3))

    async def stream(request: Request) -> Response:
        audit(request, "/stream")
        cursor = await pool.cursor(settings.stream_rows)
        # the connection stays leased until the last row has been sent
        get_exit_stack(request).push_async_callback(cursor.close)
        return StreamingResponse(cursor.rows(), media_type="text/csv")

    async def session(websocket: WebSocket) -> None:
        audit(websocket, "/ws")
        stack = get_exit_stack(websocket)
        connection = await pool.acquire()
        stack.push_async_callback(pool.release, connection)
        stats = SessionStats()
        stack.callback(stats.record)
        await websocket.accept()
        try:
            while True:
                text = await websocket.receive_text()
                rows = await connection.query()
                stats.messages += 1
                await websocket.send_json({"echo": text, "rows": rows})
        except WebSocketDisconnect:
            pass

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "pool_in_use": pool.in_use, "pool_size": pool.size})

    async def index(request: Request) -> Response:
        return PlainTextResponse(
            "exitstack-otel demo: POST /upload, GET /pool, GET /stream, WS /ws, GET /healthz\n"
        )

    routes: list[BaseRoute] = [
        Route("/", index),
        Route("/healthz", health),
        Route("/upload", upload, methods=["POST"]),
        Route("/pool", query),
        Route("/stream", stream),
        WebSocketRoute("/ws", session),
    ]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(ExitStackMiddleware, tracer_provider=tracer_provider, meter_provider=meter_provider)
        ],
    )
    app.state.pool = pool
    return app
