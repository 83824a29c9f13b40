"""FastAPIExitStack's request path: what it decides once, what it defers to the first push."""

from __future__ import annotations

import contextlib
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated

import fastapi.dependencies.utils
import httpx
import pytest
from fastapi import Depends, FastAPI, Request

from exitstack_otel import semconv
from exitstack_otel.fastapi import FastAPIExitStack, instrument_fastapi, uninstrument_fastapi
from exitstack_otel.fastapi_stack import _current_request
from exitstack_otel.stack import InstrumentedAsyncExitStack
from tests.support.otel_helpers import Sdk, attrs, histogram_points, number_points

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

pytestmark = pytest.mark.anyio

events: list[str] = []


def get_first() -> Iterator[str]:
    yield "first"
    events.append("first closed")


def get_second() -> Iterator[str]:
    yield "second"
    events.append("second closed")


async def get_async() -> AsyncIterator[str]:
    yield "async"
    events.append("async closed")


@asynccontextmanager
async def contextmanager_in_threadpool() -> AsyncIterator[str]:
    # the name of FastAPI's wrapper of sync dependencies, but the app's own code
    yield "own"
    events.append("own closed")


def build_app() -> FastAPI:
    app = FastAPI()

    @app.get("/deps")
    async def deps(
        first: Annotated[str, Depends(get_first)],
        second: Annotated[str, Depends(get_second)],
        in_loop: Annotated[str, Depends(get_async)],
    ) -> list[str]:
        return [first, second, in_loop]

    @app.get("/bare")
    async def bare() -> str:
        return "bare"

    @app.get("/moved")
    async def moved(request: Request) -> str:
        stack = request.scope["fastapi_inner_astack"]
        stack.callback(events.append, "moved closed")
        async with stack.pop_all():
            pass
        return "moved"

    @app.get("/own-wrapper-name")
    async def own_wrapper_name(request: Request) -> str:
        return str(
            await request.scope["fastapi_inner_astack"].enter_async_context(contextmanager_in_threadpool())
        )

    return app


@pytest.fixture
def app(sdk: Sdk) -> Iterator[FastAPI]:
    events.clear()
    app = build_app()
    instrument_fastapi(app, tracer_provider=sdk.tracer_provider, meter_provider=sdk.meter_provider)
    yield app
    uninstrument_fastapi(app)


async def get(app: FastAPI, path: str, times: int = 1) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        for _ in range(times):
            assert (await client.get(path)).status_code == 200


def pushed(sdk: Sdk) -> dict[tuple[str, str], int]:
    metric = sdk.metrics().get(semconv.CALLBACK_PUSHED)
    if metric is None:
        return {}
    return {
        (str(attrs(point)[semconv.STACK_NAME]), str(attrs(point)[semconv.CALLBACK_NAME])): int(point.value)
        for point in number_points(metric)
    }


def unwound_stacks(sdk: Sdk) -> dict[str, int]:
    metric = sdk.metrics().get(semconv.UNWIND_DURATION)
    if metric is None:
        return {}
    return {str(attrs(point)[semconv.STACK_NAME]): point.count for point in histogram_points(metric)}


def every_slot(stack: InstrumentedAsyncExitStack) -> dict[str, object]:
    slots = [name for cls in type(stack).__mro__ for name in getattr(cls, "__slots__", ())]
    return {name: getattr(stack, name) for name in slots}


async def test_every_slot_is_set_without_the_base_constructor(sdk: Sdk) -> None:
    # FastAPIExitStack sets InstrumentedAsyncExitStack's slots itself (a Python call fewer for
    # each of FastAPI's three stacks): a slot added there and not here fails on first read
    plain = every_slot(FastAPIExitStack())
    assert plain["_telemetry"] is None
    token = _current_request.set((sdk.telemetry(), {}, [None]))
    try:
        observed = every_slot(FastAPIExitStack())
    finally:
        _current_request.reset(token)
    assert observed["_telemetry"] is not None
    assert observed["_name"] == "fastapi"  # named by its scope key at its first push
    assert plain.keys() == observed.keys()


async def test_stacks_that_push_nothing_report_nothing(app: FastAPI, sdk: Sdk) -> None:
    await get(app, "/bare", times=3)
    assert pushed(sdk) == {}
    assert unwound_stacks(sdk) == {}
    assert sdk.spans() == ()


async def test_dependencies_keep_their_names_and_counts_request_after_request(app: FastAPI, sdk: Sdk) -> None:
    # two sync dependencies behind the same FastAPI wrapper, an async one behind another: from
    # the second request on each push is counted by its fast key, which must tell them apart
    await get(app, "/deps", times=3)
    assert events == ["async closed", "second closed", "first closed"] * 3
    assert pushed(sdk) == {
        ("fastapi_inner_astack", "get_first"): 3,
        ("fastapi_inner_astack", "get_second"): 3,
        ("fastapi_inner_astack", "get_async"): 3,
    }
    assert unwound_stacks(sdk) == {"fastapi_inner_astack": 3}
    [callbacks] = histogram_points(sdk.metrics()[semconv.UNWIND_CALLBACKS])
    assert (callbacks.count, callbacks.sum) == (3, 9)  # FastAPI's bookkeeping left out every time


async def test_an_own_generator_named_like_a_fastapi_wrapper_is_named_as_itself(
    app: FastAPI, sdk: Sdk
) -> None:
    await get(app, "/own-wrapper-name", times=2)
    assert events == ["own closed"] * 2
    assert pushed(sdk) == {("fastapi_inner_astack", "contextmanager_in_threadpool"): 2}


async def test_callbacks_moved_by_pop_all_report_under_the_stack_they_came_from(
    app: FastAPI, sdk: Sdk
) -> None:
    await get(app, "/moved", times=2)
    assert events == ["moved closed"] * 2
    assert pushed(sdk) == {("fastapi_inner_astack", "list.append"): 2}
    points = histogram_points(sdk.metrics()[semconv.CALLBACK_DURATION])
    assert [(attrs(point)[semconv.STACK_NAME], point.count) for point in points] == [
        ("fastapi_inner_astack", 2)
    ]


async def test_the_dependency_solver_checks_against_our_class_while_patched(app: FastAPI) -> None:
    # its isinstance asserts then answer at once for FastAPI's own stacks (an exact type match),
    # and still accept a plain stack someone else left in the scope
    patched = vars(fastapi.dependencies.utils)["AsyncExitStack"]
    assert patched is FastAPIExitStack
    assert isinstance(contextlib.AsyncExitStack(), patched)
    await get(app, "/deps")
