"""The apps tests/integration/test_readme_zero_code.py serves with the README's zero-code commands.

``fastapi_app`` mentions neither OpenTelemetry nor exitstack-otel: the instrumentor finds it.
``starlette_app`` is what the README's Starlette snippet builds (it is run here, so the app served
is the README's): OpenTelemetry's ASGI middleware outermost, for the server span, and
ExitStackMiddleware innermost.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import anyio
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from exitstack_otel import ExitStackMiddleware, get_exit_stack

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_block(marker: str) -> str:
    """The fenced block right after ``<!-- marker: ... -->`` in README.md."""
    found = re.search(
        rf"<!-- {re.escape(marker)}:[^>]*-->\n```\w*\n(.*?)\n```", README.read_text(), re.DOTALL
    )
    if found is None:
        raise LookupError(f"README.md has no block marked {marker!r}")
    return found.group(1)


# a slow cleanup (past the default slow_callback_threshold of 0.1 s) is a problem, and so has spans
SLOW_CLEANUP_SECONDS = 0.15


async def close_session(request: Request) -> None:
    if request.query_params.get("slow"):
        await anyio.sleep(SLOW_CLEANUP_SECONDS)


async def get_session(request: Request) -> AsyncIterator[str]:
    yield "session"
    await close_session(request)


fastapi_app = FastAPI()


@fastapi_app.get("/orders/{order_id}")
async def read_order(order_id: int, session: Annotated[str, Depends(get_session)]) -> dict[str, object]:
    return {"order_id": order_id, "session": session}


async def order(request: Request) -> PlainTextResponse:
    get_exit_stack(request).push_async_callback(close_session, request)
    return PlainTextResponse(f"order {request.path_params['order_id']}")


def _readme_starlette_app() -> Starlette:
    namespace: dict[str, Any] = {
        "Starlette": Starlette,
        "Middleware": Middleware,
        "ExitStackMiddleware": ExitStackMiddleware,
        "routes": [Route("/orders/{order_id}", order)],
    }
    exec(readme_block("zero-code-starlette"), namespace)
    app = namespace["app"]
    assert isinstance(app, Starlette)
    return app


starlette_app = _readme_starlette_app()
