"""The library with the OpenTelemetry API alone, no SDK (as an application that has not set one up
runs it): every module imports, a request through ExitStackMiddleware and one through an
instrumented FastAPI app run their cleanups, the instrumentor instruments. Run by
``make test-api-only`` in a venv of its own; it fails if the SDK is installed there."""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.lowlevel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for tests.support
from tests.support.asgi import get_status

# the demo and its CLI need the demo extra (the SDK among it); everything else is the library
NEEDS_DEMO_EXTRA = ("exitstack_otel.demo", "exitstack_otel.cli", "exitstack_otel.__main__")


def import_every_module() -> list[str]:
    import exitstack_otel

    names = []
    for module in pkgutil.walk_packages(exitstack_otel.__path__, "exitstack_otel."):
        if module.name.startswith(NEEDS_DEMO_EXTRA):
            continue
        importlib.import_module(module.name)
        names.append(module.name)
    return names


async def starlette_request(log: list[str]) -> None:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from exitstack_otel import ExitStackMiddleware, get_exit_stack

    async def release() -> None:
        await anyio.lowlevel.checkpoint()
        log.append("async cleanup")

    async def endpoint(request: Request) -> PlainTextResponse:
        stack = get_exit_stack(request)
        stack.callback(log.append, "sync cleanup")
        stack.push_async_callback(release)
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/", endpoint)], middleware=[Middleware(ExitStackMiddleware)])
    assert await get_status(app, "/") == 200
    assert log == ["async cleanup", "sync cleanup"], log


async def fastapi_request(log: list[str]) -> None:
    from fastapi import Depends, FastAPI

    from exitstack_otel.fastapi import instrument_fastapi, uninstrument_fastapi
    from exitstack_otel.instrumentor import ExitStackInstrumentor

    async def resource() -> AsyncIterator[str]:
        yield "resource"
        log.append("teardown")

    app = FastAPI()

    @app.get("/", dependencies=[Depends(resource)])
    async def endpoint() -> str:
        return "ok"

    instrument_fastapi(app)
    assert await get_status(app, "/") == 200
    uninstrument_fastapi(app)
    instrumentor = ExitStackInstrumentor()
    instrumentor.instrument()  # BaseInstrumentor checks _instruments (FastAPI) against what is installed
    assert instrumentor.is_instrumented_by_opentelemetry
    try:
        assert await get_status(FastAPI(), "/missing") == 404
    finally:
        instrumentor.uninstrument()
    assert log == ["teardown"], log


def main() -> int:
    if importlib.util.find_spec("opentelemetry.sdk") is not None:
        print("check-api-only: opentelemetry-sdk is installed here; this venv must have the API only")
        return 1
    modules = import_every_module()
    starlette_log: list[str] = []
    fastapi_log: list[str] = []
    for backend in ("asyncio", "trio"):
        starlette_log.clear()
        fastapi_log.clear()
        anyio.run(starlette_request, starlette_log, backend=backend)
        anyio.run(fastapi_request, fastapi_log, backend=backend)
    print(f"check-api-only: {len(modules)} modules import, Starlette and FastAPI requests ran their cleanups")
    return 0


if __name__ == "__main__":
    sys.exit(main())
