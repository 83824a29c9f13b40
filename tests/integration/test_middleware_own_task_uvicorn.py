"""Task-bound cleanups through a real uvicorn, on its default loop and parser and on what
uvicorn[standard] runs (uvloop, httptools): every request is answered, every token comes back.
(While the unwind ran in a task of its own, the releases failed and the third request hung.)"""

from __future__ import annotations

import anyio
import anyio.lowlevel
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from exitstack_otel import ExitStackMiddleware, get_exit_stack, semconv
from tests.support.otel_helpers import Sdk
from tests.support.servers import running_server


@pytest.mark.parametrize(("loop", "http"), [("asyncio", "h11"), ("uvloop", "httptools")])
def test_task_bound_releases_on_the_stack_let_every_request_through(sdk: Sdk, loop: str, http: str) -> None:
    limiter = anyio.CapacityLimiter(2)
    released: list[int] = []

    async def cleanup() -> None:
        await anyio.lowlevel.checkpoint()

    def release() -> None:
        limiter.release()  # raises unless this is the task that borrowed the token
        released.append(1)

    async def endpoint(request: Request) -> PlainTextResponse:
        stack = get_exit_stack(request)
        await limiter.acquire()
        stack.callback(release)
        group = await stack.enter_async_context(anyio.create_task_group())
        group.start_soon(anyio.lowlevel.checkpoint)
        stack.push_async_callback(cleanup)
        return PlainTextResponse("ok")

    app = ExitStackMiddleware(
        Starlette(routes=[Route("/", endpoint)]),
        tracer_provider=sdk.tracer_provider,
        meter_provider=sdk.meter_provider,
    )
    with running_server(app, loop=loop, http=http) as server, httpx.Client(base_url=server.url()) as client:
        # a bound for a hang, never a measurement: each answer takes milliseconds
        statuses = [client.get("/", timeout=30).status_code for _ in range(6)]
    assert statuses == [200] * 6
    assert len(released) == 6
    assert limiter.borrowed_tokens == 0
    outcomes = {point.attributes[semconv.CALLBACK_OUTCOME] for point in sdk.points(semconv.CALLBACK_DURATION)}
    assert outcomes == {semconv.OUTCOME_OK}
