"""What reaches the exported data stays bounded and honest: error types, unprintable exceptions,
FastAPI's own bookkeeping, the stacks of a FastAPI app mounted in another."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from typing import Annotated

import httpx
import pytest
from fastapi import Depends, FastAPI
from opentelemetry.trace import StatusCode
from starlette.types import ASGIApp, Receive, Scope, Send

from exitstack_otel import semconv
from exitstack_otel.fastapi import instrument_fastapi, uninstrument_fastapi
from exitstack_otel.instruments import FOLD_EVERY
from exitstack_otel.stack import InstrumentedAsyncExitStack
from exitstack_otel.telemetry import MAX_ERROR_TYPES
from tests.support.otel_helpers import Sdk, attrs, histogram_points, number_points

pytestmark = pytest.mark.anyio


async def test_error_types_are_capped_like_callback_names(sdk: Sdk) -> None:
    telemetry = sdk.telemetry()
    # exception classes made at run time, as generated code or a bad plugin could make them
    classes = [type(f"Generated{index}Error", (Exception,), {}) for index in range(MAX_ERROR_TYPES + 50)]

    def fail(cls: type[Exception]) -> None:
        raise cls

    for cls in classes:
        with pytest.raises(cls):
            async with InstrumentedAsyncExitStack("s", telemetry=telemetry) as stack:
                stack.callback(fail, cls)
    points = histogram_points(sdk.metrics()[semconv.CALLBACK_DURATION])
    types = {attrs(point).get(semconv.ERROR_TYPE) for point in points}
    assert len(types) == MAX_ERROR_TYPES + 1
    assert semconv.OTHER_NAME in types
    assert sum(point.count for point in points) == len(classes)  # capped names, no lost counts
    unwind_types = {
        (span.attributes or {}).get(semconv.ERROR_TYPE) for span in sdk.spans_named(semconv.SPAN_UNWIND)
    }
    assert len(unwind_types) == MAX_ERROR_TYPES + 1


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken too")


async def test_a_failure_whose_str_raises_still_gets_an_ended_span(sdk: Sdk) -> None:
    def fail() -> None:
        raise Unprintable

    with pytest.raises(Unprintable):
        async with InstrumentedAsyncExitStack("s", telemetry=sdk.telemetry()) as stack:
            stack.callback(fail)
    [failed] = [span for span in sdk.spans() if span.name.startswith(semconv.SPAN_CALLBACK)]
    assert failed.end_time is not None
    assert failed.status.status_code is StatusCode.ERROR
    [event] = failed.events
    assert event.name == semconv.EVENT_EXCEPTION
    assert dict(event.attributes or {})[semconv.EXCEPTION_TYPE].endswith("Unprintable")  # type: ignore[union-attr]
    [point] = histogram_points(sdk.metrics()[semconv.CALLBACK_DURATION])
    assert attrs(point)[semconv.CALLBACK_OUTCOME] == semconv.OUTCOME_ERROR


def _fastapi_keeps_cleanup_scopes() -> bool:
    """Whether this FastAPI pushes its dependency cancel scope and its pop (newer releases)."""
    import fastapi.dependencies.utils

    return "fastapi_async_cleanup_scopes" in inspect.getsource(fastapi.dependencies.utils)


async def get_resource() -> AsyncIterator[str]:
    yield "resource"


def fastapi_app() -> FastAPI:
    app = FastAPI()

    @app.get("/thing")
    async def thing(resource: Annotated[str, Depends(get_resource)]) -> str:
        return resource

    return app


async def get(app: FastAPI, path: str) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        assert (await client.get(path)).status_code == 200


def pushed_by_stack(sdk: Sdk) -> dict[tuple[str, str], int]:
    return {
        (str(attrs(point)[semconv.STACK_NAME]), str(attrs(point)[semconv.CALLBACK_NAME])): int(point.value)
        for point in number_points(sdk.metrics()[semconv.CALLBACK_PUSHED])
    }


@pytest.mark.parametrize("report_framework_callbacks", [False, True])
async def test_fastapi_bookkeeping_is_not_reported_unless_asked(
    sdk: Sdk, report_framework_callbacks: bool
) -> None:
    app = fastapi_app()
    instrument_fastapi(
        app,
        tracer_provider=sdk.tracer_provider,
        meter_provider=sdk.meter_provider,
        report_framework_callbacks=report_framework_callbacks,
    )
    try:
        await get(app, "/thing")
    finally:
        uninstrument_fastapi(app)
    names = {name for _, name in pushed_by_stack(sdk)}
    bookkeeping = {name for name in names if name not in ("get_resource",)}
    assert "get_resource" in names
    if report_framework_callbacks and _fastapi_keeps_cleanup_scopes():
        assert bookkeeping == {"dict.pop", "CancelScope"}
    elif report_framework_callbacks:
        assert bookkeeping == set()  # older FastAPI pushes no bookkeeping of its own
    else:
        assert bookkeeping == set()
        # and the inner stack's unwind counts the one real cleanup only
        [callbacks] = histogram_points(sdk.metrics()[semconv.UNWIND_CALLBACKS])
        assert (callbacks.count, callbacks.sum) == (1, 1)


async def test_each_stack_of_a_mounted_fastapi_app_is_named_by_its_key(sdk: Sdk) -> None:
    inner = fastapi_app()
    outer = FastAPI()
    closed: list[str] = []

    def capture_outer_stack(app: ASGIApp) -> ASGIApp:
        async def mounted(scope: Scope, receive: Receive, send: Send) -> None:
            outer_stack = scope["fastapi_middleware_astack"]  # the mounted app overwrites the key
            await app(scope, receive, send)
            assert scope["fastapi_middleware_astack"] is not outer_stack
            outer_stack.callback(closed.append, "outer")

        return mounted

    outer.mount("/inner", capture_outer_stack(inner))
    for app in (outer, inner):
        instrument_fastapi(app, tracer_provider=sdk.tracer_provider, meter_provider=sdk.meter_provider)
    try:
        await get(outer, "/inner/thing")
    finally:
        for app in (outer, inner):
            uninstrument_fastapi(app)
    assert closed == ["outer"]
    assert pushed_by_stack(sdk) == {
        ("fastapi_inner_astack", "get_resource"): 1,
        ("fastapi_middleware_astack", "list.append"): 1,  # the outer one, by the key it was stored under
    }


async def test_a_failed_callback_keeps_its_exemplar_and_quick_ones_cost_none(sdk: Sdk) -> None:
    def fail() -> None:
        raise RuntimeError("refused")

    stack = InstrumentedAsyncExitStack("s", telemetry=sdk.telemetry())
    stack.callback(print, end="")  # quick and fine: aggregated in process, no exemplar
    stack.callback(fail)
    with pytest.raises(RuntimeError):
        await stack.aclose()
    [span] = [s for s in sdk.spans() if s.name.startswith(semconv.SPAN_CALLBACK)]
    points = {
        attrs(point)[semconv.CALLBACK_OUTCOME]: point
        for point in histogram_points(sdk.metrics()[semconv.CALLBACK_DURATION])
    }
    [exemplar] = points[semconv.OUTCOME_ERROR].exemplars
    assert (exemplar.trace_id, exemplar.span_id) == (span.context.trace_id, span.context.span_id)
    assert list(points[semconv.OUTCOME_OK].exemplars) == []


async def test_callback_durations_stay_folded_however_rarely_a_reader_collects(sdk: Sdk) -> None:
    # the fast path appends each duration; the unwinds fold them now and then, with no collection
    telemetry = sdk.telemetry()
    pushed = 3 * FOLD_EVERY
    for _ in range(pushed // 3):
        async with InstrumentedAsyncExitStack("s", telemetry=telemetry) as stack:
            for _ in range(3):
                stack.callback(len, "")
    assert telemetry.instruments is not None
    series = list(telemetry.instruments.callback_duration._series.values())
    assert series
    assert sum(len(one._pending) for one in series) < FOLD_EVERY
    (point,) = histogram_points(sdk.metrics()[semconv.CALLBACK_DURATION])
    assert point.count == pushed  # folded, not lost


async def test_the_telemetry_folds_once_unwinds_report_fold_every_values(sdk: Sdk) -> None:
    # the stack only reports what it appended; when to fold is the telemetry's decision
    telemetry = sdk.telemetry()
    assert telemetry.instruments is not None
    duration = telemetry.unwind_series("s", "/", "GET", semconv.OUTCOME_OK).duration
    for _ in range(FOLD_EVERY // 2 - 1):  # two values an unwind: its duration and its callbacks
        telemetry.unwound("s", "/", "GET", None, None, 1.0, 1.001, 0, None)
    assert len(duration._pending) == FOLD_EVERY // 2 - 1
    assert telemetry.instruments.unfolded == FOLD_EVERY - 2
    telemetry.unwound("s", "/", "GET", None, None, 1.0, 1.001, 0, None)
    assert not duration._pending
    assert telemetry.instruments.unfolded == 0
    # what Unwinding.finish reports (an unwind that made spans) goes through the same decision
    duration.recorder(0.25)
    telemetry.instruments.appended(FOLD_EVERY - 1)
    assert duration._pending == [0.25]
    telemetry.instruments.appended(1)
    assert not duration._pending
    assert telemetry.instruments.unfolded == 0
    (point,) = histogram_points(sdk.metrics()[semconv.UNWIND_DURATION])
    assert point.count == FOLD_EVERY // 2 + 1


async def test_with_all_spans_only_a_troubled_unwind_keeps_an_exemplar(sdk: Sdk) -> None:
    def fail() -> None:
        raise RuntimeError("refused")

    telemetry = sdk.telemetry(callback_spans="all")
    async with InstrumentedAsyncExitStack("well", telemetry=telemetry) as stack:
        stack.callback(print, end="")
    with pytest.raises(RuntimeError):
        async with InstrumentedAsyncExitStack("troubled", telemetry=telemetry) as stack:
            stack.callback(fail)
    unwind_spans = {
        (span.attributes or {})[semconv.STACK_NAME]: span for span in sdk.spans_named(semconv.SPAN_UNWIND)
    }
    assert set(unwind_spans) == {"well", "troubled"}  # "all": a span for the unwind that went well too
    points = {
        attrs(point)[semconv.STACK_NAME]: point
        for point in histogram_points(sdk.metrics()[semconv.UNWIND_DURATION])
    }
    assert list(points["well"].exemplars) == []
    [exemplar] = points["troubled"].exemplars
    troubled = unwind_spans["troubled"].context
    assert (exemplar.trace_id, exemplar.span_id) == (troubled.trace_id, troubled.span_id)
