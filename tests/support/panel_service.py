"""A FastAPI service whose cleanup is known exactly, for the dashboard test against a real Prometheus.

``python -m tests.support.panel_service PORT METRICS_PORT``: every request opens FastAPI's three stacks;
``/slow-teardown`` has one ``yield`` dependency whose teardown takes 0.3 s, ``/two-deps`` two quick
ones and a function-scoped one. Metrics are served by OpenTelemetry's Prometheus exporter.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Annotated

import uvicorn
from fastapi import Depends, FastAPI

from exitstack_otel.demo.sdk import build_sdk
from exitstack_otel.fastapi import instrument_fastapi

# real seconds: the dashboard's slow-teardown panel reads them from a real Prometheus scrape
SLOW_TEARDOWN_SECONDS = 0.3


async def slow_teardown() -> AsyncIterator[str]:
    yield "slow"
    await asyncio.sleep(SLOW_TEARDOWN_SECONDS)


async def first() -> AsyncIterator[str]:
    yield "first"


async def second() -> AsyncIterator[str]:
    yield "second"


async def per_call() -> AsyncIterator[str]:
    yield "per call"


def build_app() -> FastAPI:
    app = FastAPI()

    @app.get("/slow-teardown")
    async def slow(value: Annotated[str, Depends(slow_teardown)]) -> str:
        return value

    @app.get("/two-deps")
    async def two(
        a: Annotated[str, Depends(first)],
        b: Annotated[str, Depends(second)],
        c: Annotated[str, Depends(per_call, scope="function")],
    ) -> str:
        return a + b + c

    return app


def main(port: int, metrics_port: int) -> None:
    sdk = build_sdk(prometheus_port=metrics_port)
    app = build_app()
    instrument_fastapi(app, tracer_provider=sdk.tracer_provider, meter_provider=sdk.meter_provider)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
