"""Served by ``opentelemetry-instrument uvicorn tests.support.zero_code_app:app`` in test_instrumentor_otlp.

Nothing here mentions OpenTelemetry or instruments anything: a Starlette app that uses
ExitStackMiddleware, with the FastAPI app of tests/support/fastapi_app.py mounted under /api.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from exitstack_otel import ExitStackMiddleware, get_exit_stack

from .fastapi_app import build_app


def release_connection() -> None:
    pass


async def starlette_upload(request: Request) -> PlainTextResponse:
    async with request.form() as form:
        get_exit_stack(request, "starlette_astack").callback(release_connection)
        return PlainTextResponse(f"fields={len(form)}")


app = Starlette(
    routes=[
        Route("/starlette/upload", starlette_upload, methods=["POST"]),
        Mount("/api", build_app()),
    ],
    middleware=[Middleware(ExitStackMiddleware, scope_key="starlette_astack")],
)
