"""instrument_fastapi(app): FastAPI's three request stacks reported, FastAPI's behaviour unchanged."""

from __future__ import annotations

import contextlib
import inspect
from typing import TYPE_CHECKING, Annotated, Any

import anyio
import fastapi
import fastapi.dependencies.utils
import fastapi.middleware.asyncexitstack
import fastapi.routing
import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, File, UploadFile
from opentelemetry.sdk.metrics.export import HistogramDataPoint, NumberDataPoint
from opentelemetry.sdk.trace import TracerProvider
from starlette.applications import Starlette
from starlette.middleware import Middleware

from exitstack_otel import ExitStackMiddleware, semconv
from exitstack_otel.fastapi import FastAPIExitStack, instrument_fastapi, uninstrument_fastapi
from tests.support import fastapi_app
from tests.support.fastapi_app import TeardownFailed, build_app
from tests.support.otel_helpers import Sdk

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence


class Recorder(Sdk):
    """The SDK of tests/support/otel_helpers.py, with readers for FastAPI's three stacks."""

    def instrument(self, app: FastAPI) -> None:
        instrument_fastapi(
            app,
            tracer_provider=self.tracer_provider,
            meter_provider=self.meter_provider,
            callback_spans="all",
        )

    def callbacks(self) -> list[Mapping[str, Any]]:
        prefix = semconv.SPAN_CALLBACK + " "
        return [dict(span.attributes or {}) for span in self.spans() if span.name.startswith(prefix)]

    def dependency_names(self) -> list[str]:
        # FastAPI's own bookkeeping (a CancelScope, a dict.pop) shares the stacks; the dependencies
        # of tests/support/fastapi_app.py are all called get_*
        names = [str(attrs[semconv.CALLBACK_NAME]) for attrs in self.callbacks()]
        return [name for name in names if name.startswith("get_")]

    def callback(self, name: str) -> Mapping[str, Any]:
        found = [attrs for attrs in self.callbacks() if attrs[semconv.CALLBACK_NAME] == name]
        assert len(found) == 1, f"{name}: {self.callbacks()}"
        return found[0]

    def duration_points(self, name: str) -> list[HistogramDataPoint]:
        return [point for point in self.points(name) if isinstance(point, HistogramDataPoint)]

    def pushed(self) -> dict[tuple[str, str], int]:
        return {
            (str(p.attributes[semconv.STACK_NAME]), str(p.attributes[semconv.CALLBACK_NAME])): int(p.value)
            for p in self.points(semconv.CALLBACK_PUSHED)
            if isinstance(p, NumberDataPoint) and p.attributes
        }


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    fastapi_app.events.clear()
    recorder = Recorder()
    yield recorder
    recorder.shutdown()


@pytest.fixture
def app(recorder: Recorder) -> Iterator[FastAPI]:
    app = build_app()
    recorder.instrument(app)
    yield app
    uninstrument_fastapi(app)


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


async def upload(app: FastAPI) -> httpx.Response:
    async with client(app) as http:
        return await http.post(
            "/upload", data={"title": "report"}, files={"file": ("report.txt", b"hello upload", "text/plain")}
        )


@pytest.mark.anyio
async def test_upload_with_dependencies_reports_all_three_stacks(app: FastAPI, recorder: Recorder) -> None:
    response = await upload(app)

    assert response.status_code == 200
    assert response.json() == {"title": "report", "size": 12, "db": "db", "sync": "sync"}
    assert recorder.callback("FormData.close")[semconv.STACK_NAME] == "fastapi_middleware_astack"
    assert recorder.callback("get_db")[semconv.STACK_NAME] == "fastapi_inner_astack"
    sync_dep = recorder.callback("get_sync_resource")
    assert sync_dep[semconv.STACK_NAME] == "fastapi_function_astack"
    assert sync_dep[semconv.CALLBACK_KIND] == semconv.KIND_ASYNC_CONTEXT
    assert all(attrs[semconv.CALLBACK_OUTCOME] == semconv.OUTCOME_OK for attrs in recorder.callbacks())
    assert fastapi_app.events == [
        "get_db open",
        "get_sync_resource open",
        "get_sync_resource close",
        "get_db close",
    ]

    unwinds = {
        span.attributes[semconv.STACK_NAME]: span
        for span in recorder.spans_named(semconv.SPAN_UNWIND)
        if span.attributes
    }
    assert set(unwinds) == {"fastapi_middleware_astack", "fastapi_inner_astack", "fastapi_function_astack"}
    for span in unwinds.values():
        assert span.attributes is not None
        assert span.attributes[semconv.HTTP_ROUTE] == "/upload"
        assert span.attributes[semconv.HTTP_REQUEST_METHOD] == "POST"

    recorded = {
        (p.attributes[semconv.STACK_NAME], p.attributes[semconv.CALLBACK_NAME])
        for p in recorder.duration_points(semconv.CALLBACK_DURATION)
        if p.attributes
    }
    assert {
        ("fastapi_middleware_astack", "FormData.close"),
        ("fastapi_inner_astack", "get_db"),
        ("fastapi_function_astack", "get_sync_resource"),
    } <= recorded
    pushed = recorder.pushed()
    assert pushed[("fastapi_middleware_astack", "FormData.close")] == 1
    assert pushed[("fastapi_inner_astack", "get_db")] == 1
    assert pushed[("fastapi_function_astack", "get_sync_resource")] == 1


@pytest.mark.anyio
async def test_teardown_that_raises_is_an_error_and_fastapi_reacts_as_without_us(
    app: FastAPI, recorder: Recorder
) -> None:
    plain = build_app()
    with pytest.raises(TeardownFailed):
        async with client(plain) as http:
            await http.get("/teardown-fails")
    assert recorder.callbacks() == []

    with pytest.raises(TeardownFailed):
        async with client(app) as http:
            await http.get("/teardown-fails")

    failed = recorder.callback("get_failing_teardown")
    assert failed[semconv.CALLBACK_OUTCOME] == semconv.OUTCOME_ERROR
    assert failed[semconv.ERROR_TYPE] == "tests.support.fastapi_app.TeardownFailed"


@pytest.mark.anyio
async def test_dependency_reraising_http_exception_keeps_the_404(app: FastAPI, recorder: Recorder) -> None:
    async with client(app) as http:
        response = await http.get("/missing")

    assert response.status_code == 404
    assert response.json() == {"detail": "no such thing"}
    assert fastapi_app.events == ["get_reraising saw HTTPException"]
    # re-raising the exception it was given is letting it pass: the teardown itself did not fail
    assert recorder.callback("get_reraising")[semconv.CALLBACK_OUTCOME] == semconv.OUTCOME_OK


async def outcome(app: FastAPI, path: str) -> tuple[int, bytes] | str:
    try:
        async with client(app) as http:
            response = await http.get(path)
    except Exception as exc:
        return type(exc).__qualname__
    return response.status_code, response.content


@pytest.mark.anyio
async def test_dependency_swallowing_an_exception_behaves_exactly_as_without_us(
    app: FastAPI, recorder: Recorder
) -> None:
    expected = await outcome(build_app(), "/swallowed")
    assert recorder.callbacks() == []

    assert await outcome(app, "/swallowed") == expected
    assert recorder.callback("get_swallowing")[semconv.CALLBACK_OUTCOME] == semconv.OUTCOME_SUPPRESSED


@pytest.mark.anyio
async def test_streaming_response_dependency_closes_after_the_last_chunk(
    app: FastAPI, recorder: Recorder
) -> None:
    async with client(app) as http:
        response = await http.get("/stream")

    assert response.text == "chunk 0;chunk 1;chunk 2;"
    assert fastapi_app.events == ["get_db open", "chunk 0", "chunk 1", "chunk 2", "get_db close"]
    assert recorder.callback("get_db")[semconv.STACK_NAME] == "fastapi_inner_astack"


async def websocket_exchange(app: FastAPI, path: str, text: str) -> list[Mapping[str, Any]]:
    inbox: list[Mapping[str, Any]] = [
        {"type": "websocket.connect"},
        {"type": "websocket.receive", "text": text},
    ]
    sent: list[Mapping[str, Any]] = []

    async def receive() -> Mapping[str, Any]:
        if inbox:
            return inbox.pop(0)
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: Mapping[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "ws",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
        "subprotocols": [],
    }
    with anyio.fail_after(10):
        await app(scope, receive, send)  # type: ignore[arg-type]
    return sent


@pytest.mark.anyio
async def test_websocket_dependency_teardown_is_reported(app: FastAPI, recorder: Recorder) -> None:
    sent = await websocket_exchange(app, "/ws", "ping")

    assert [message["type"] for message in sent] == ["websocket.accept", "websocket.send", "websocket.close"]
    assert sent[1]["text"] == "db:ping"
    assert fastapi_app.events == ["get_db open", "get_db close"]
    assert recorder.callback("get_db")[semconv.STACK_NAME] == "fastapi_inner_astack"
    # the other two stacks held nothing to report: their unwinds appear nowhere
    unwinds = recorder.spans_named(semconv.SPAN_UNWIND)
    assert {span.attributes[semconv.STACK_NAME] for span in unwinds if span.attributes} == {
        "fastapi_inner_astack"
    }


@pytest.mark.anyio
async def test_other_apps_in_the_process_stay_plain(app: FastAPI, recorder: Recorder) -> None:
    other = build_app()
    async with client(other) as http:
        response = await http.get("/items/3")

    assert response.json() == {"item_id": 3, "db": "db"}
    assert fastapi_app.events == ["get_db open", "get_db close"]
    assert recorder.spans() == ()
    assert recorder.duration_points(semconv.CALLBACK_DURATION) == []


def patched_names() -> Sequence[object]:
    # the modules that make stacks or check them with isinstance (the solver from 0.121 on, the
    # first with request and function stacks: before, it had no such name)
    modules = [fastapi.routing, fastapi.middleware.asyncexitstack, fastapi.dependencies.utils]
    return [module.AsyncExitStack for module in modules if hasattr(module, "AsyncExitStack")]


@pytest.mark.anyio
async def test_uninstrument_restores_fastapi_and_is_counted_across_apps(recorder: Recorder) -> None:
    first, second = build_app(), build_app()
    recorder.instrument(first)
    recorder.instrument(second)
    assert patched_names() == [FastAPIExitStack] * 3

    uninstrument_fastapi(first)
    assert patched_names() == [FastAPIExitStack] * 3
    assert "build_middleware_stack" not in vars(first)
    async with client(first) as http:
        assert (await http.get("/items/1")).status_code == 200
    assert recorder.dependency_names() == []
    async with client(second) as http:
        assert (await http.get("/items/2")).status_code == 200
    assert recorder.callback("get_db")[semconv.STACK_NAME] == "fastapi_inner_astack"

    uninstrument_fastapi(second)
    assert patched_names() == [contextlib.AsyncExitStack] * 3
    assert "build_middleware_stack" in FastAPI.__dict__
    assert FastAPI.build_middleware_stack.__module__ == "fastapi.applications"
    async with client(second) as http:
        assert (await http.get("/items/3")).status_code == 200
    assert recorder.dependency_names() == ["get_db"]


@pytest.mark.anyio
async def test_instrumenting_an_app_that_already_served(recorder: Recorder) -> None:
    app = build_app()
    async with client(app) as http:
        assert (await http.get("/items/1")).status_code == 200
        recorder.instrument(app)
        try:
            assert (await http.get("/items/2")).status_code == 200
        finally:
            uninstrument_fastapi(app)
        assert (await http.get("/items/3")).status_code == 200

    assert recorder.dependency_names() == ["get_db"]


def test_plain_stacks_left_in_the_scope_still_pass_fastapi_checks() -> None:
    # a stack FastAPI finds in the scope but did not make (made by another middleware, or
    # before instrumentation) passes the isinstance checks made against the patched name
    assert isinstance(contextlib.AsyncExitStack(), FastAPIExitStack)
    assert not isinstance(contextlib.ExitStack(), FastAPIExitStack)


def test_bad_input_gets_a_clear_error(recorder: Recorder) -> None:
    with pytest.raises(TypeError, match=r"needs a fastapi\.FastAPI app"):
        instrument_fastapi(object())
    with pytest.raises(RuntimeError, match="not instrumented"):
        uninstrument_fastapi(build_app())
    app = build_app()
    recorder.instrument(app)
    try:
        with pytest.raises(RuntimeError, match="already instrumented"):
            recorder.instrument(app)
    finally:
        uninstrument_fastapi(app)
    assert patched_names() == [contextlib.AsyncExitStack] * 3


@pytest.mark.anyio
async def test_fastapi_router_in_a_starlette_app_keeps_working_while_patched(app: FastAPI) -> None:
    # FastAPI's routing asserts isinstance(scope["fastapi_middleware_astack"], <patched name>); here
    # the stack is ExitStackMiddleware's, an InstrumentedAsyncExitStack but no FastAPIExitStack
    router = APIRouter()

    @router.post("/upload")
    async def upload(file: Annotated[UploadFile, File()]) -> dict[str, int]:
        return {"size": len(await file.read())}

    starlette_app = Starlette(routes=router.routes, middleware=[Middleware(ExitStackMiddleware)])
    transport = httpx.ASGITransport(app=starlette_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        response = await http.post("/upload", files={"file": ("a.txt", b"abc", "text/plain")})

    assert patched_names() == [FastAPIExitStack] * 3
    assert response.json() == {"size": 3}


class BrokenTracerProvider(TracerProvider):
    def get_tracer(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("tracer provider broken")


@pytest.mark.anyio
async def test_broken_provider_never_breaks_a_request(caplog: pytest.LogCaptureFixture) -> None:
    fastapi_app.events.clear()
    app = build_app()
    instrument_fastapi(app, tracer_provider=BrokenTracerProvider())
    try:
        async with client(app) as http:
            first = await http.get("/items/1")
            second = await http.get("/items/2")
    finally:
        uninstrument_fastapi(app)

    assert (first.status_code, second.status_code) == (200, 200)
    assert fastapi_app.events == ["get_db open", "get_db close"] * 2
    logged = [record for record in caplog.records if record.name.startswith("exitstack_otel")]
    assert len(logged) == 1  # once, not per request
    assert "tracer provider broken" in str(logged[0].exc_info)


@pytest.mark.anyio
async def test_concurrency_limited_dependency_is_named_after_its_function(recorder: Recorder) -> None:
    if "max_concurrency" not in inspect.signature(Depends).parameters:
        pytest.skip(f"FastAPI {fastapi.__version__} has no Depends(max_concurrency=...)")
    app = FastAPI()

    @app.get("/limited")
    async def limited(db: Annotated[str, Depends(fastapi_app.get_db, max_concurrency=2)]) -> str:
        return db

    recorder.instrument(app)
    try:
        async with client(app) as http:
            assert (await http.get("/limited")).json() == "db"
    finally:
        uninstrument_fastapi(app)

    assert recorder.dependency_names() == ["get_db"]
