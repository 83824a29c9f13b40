"""``read_form`` through httpx's ASGI transport, on asyncio and trio."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.datastructures import FormData, UploadFile
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Message

from exitstack_otel import ExitStackMiddleware, read_form, semconv
from tests.support.asgi import http_scope
from tests.support.forms import client_for, post
from tests.support.leaks import temp_files
from tests.support.upload_app import (
    BAD_UPLOADS,
    GOOD_UPLOADS,
    MULTIPART,
    TEST_LIMITS,
    URLENCODED,
    Upload,
    closed_forms,
    create_app,
    field_part,
    file_part,
    multipart,
)


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.mark.anyio
@pytest.mark.parametrize("upload", GOOD_UPLOADS, ids=lambda upload: upload.name)
async def test_good_form_is_read_and_closed_by_the_stack(
    upload: Upload, tempdir: Path, reader: InMemoryMetricReader
) -> None:
    async with client_for(create_app(TEST_LIMITS, reader=reader)) as client:
        response = await post(client, "/upload", upload.body, upload.content_type)
    assert response.status_code == 200, response.text
    assert closed_forms(reader) == {semconv.OUTCOME_OK: 1}
    assert temp_files(tempdir) == []


@pytest.mark.anyio
async def test_form_contents_arrive_intact(reader: InMemoryMetricReader) -> None:
    body = multipart(
        field_part("title", "grüße".encode()),
        file_part("doc", "a.txt", b"0123456789" * 500),
        file_part("doc", "b.txt", b""),
    )
    async with client_for(create_app(TEST_LIMITS, reader=reader)) as client:
        response = await post(client, "/upload", body, MULTIPART)
    assert response.json() == {
        "fields": {"title": "grüße"},
        "files": [
            {"field": "doc", "size": 5000, "filename_length": 5},
            {"field": "doc", "size": 0, "filename_length": 5},
        ],
    }


@pytest.mark.anyio
@pytest.mark.parametrize("upload", BAD_UPLOADS, ids=lambda upload: upload.name)
async def test_bad_input_gets_a_client_error_and_leaves_nothing_open(
    upload: Upload, tempdir: Path, reader: InMemoryMetricReader
) -> None:
    async with client_for(create_app(TEST_LIMITS, reader=reader)) as client:
        response = await post(client, "/upload", upload.body, upload.content_type)
    assert response.status_code == upload.status, response.text
    assert response.text  # Starlette answers an HTTPException with its detail as plain text
    assert temp_files(tempdir) == []
    assert closed_forms(reader) == {}  # no form came into being, so no close was pushed


@pytest.mark.anyio
async def test_every_file_created_before_a_failure_is_closed(
    tempdir: Path, created_files: list[UploadFile]
) -> None:
    # the endpoint never gets a form here; the files are caught where the parser hands them out
    body = b"".join(file_part(f"f{i}", "x.bin", b"q" * 4096) for i in range(3))[:-10]
    async with client_for(create_app(TEST_LIMITS)) as client:
        response = await post(client, "/upload", body, MULTIPART)
    assert response.status_code == 400
    assert response.text == "Multipart body ended before its closing boundary."
    assert len(created_files) == 3
    assert all(upload.file.closed for upload in created_files)


@pytest.mark.anyio
async def test_plain_starlette_leaves_the_form_open_and_read_form_closes_it(tempdir: Path) -> None:
    forms: dict[str, FormData] = {}

    async def plain(request: Request) -> JSONResponse:
        forms["plain"] = await request.form()
        return JSONResponse({})

    async def helped(request: Request) -> JSONResponse:
        forms["read_form"] = await read_form(request, spool_max_size=1024)
        return JSONResponse({})

    app = Starlette(
        routes=[Route("/plain", plain, methods=["POST"]), Route("/helped", helped, methods=["POST"])],
        middleware=[Middleware(ExitStackMiddleware)],
    )
    body = multipart(file_part("f", "a.bin", b"p" * (2 * 1024 * 1024)))
    async with client_for(app) as client:
        for path in ("/plain", "/helped"):
            response = await post(client, path, body, MULTIPART)
            assert response.status_code == 200
    plain_file, helped_file = (form["f"] for form in (forms["plain"], forms["read_form"]))
    assert isinstance(plain_file, UploadFile)
    assert isinstance(helped_file, UploadFile)
    assert not plain_file.file.closed  # open until garbage collection
    assert len(temp_files(tempdir)) == 1
    assert helped_file.file.closed
    await forms["plain"].close()
    assert temp_files(tempdir) == []


def observed_app(route: Route, reader: InMemoryMetricReader, spans: InMemorySpanExporter) -> Starlette:
    """One route behind ExitStackMiddleware with a live SDK and a span for every callback."""
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    middleware = Middleware(
        ExitStackMiddleware,
        tracer_provider=tracer_provider,
        meter_provider=MeterProvider(metric_readers=[reader]),
        callback_spans="all",
    )
    return Starlette(routes=[route], middleware=[middleware])


@pytest.mark.anyio
async def test_form_close_is_a_callback_in_metrics_and_spans(
    reader: InMemoryMetricReader, spans: InMemorySpanExporter
) -> None:

    async def endpoint(request: Request) -> JSONResponse:
        await read_form(request)
        return JSONResponse({})

    app = observed_app(Route("/forms/{kind}", endpoint, methods=["POST"]), reader, spans)
    async with client_for(app) as client:
        await post(client, "/forms/a", b"a=1", URLENCODED)
        await post(client, "/forms/b", multipart(field_part("b", b"2")), MULTIPART)
    assert closed_forms(reader) == {semconv.OUTCOME_OK: 2}
    callback_spans = [
        span for span in spans.get_finished_spans() if span.name.startswith(semconv.SPAN_CALLBACK)
    ]
    assert [span.name for span in callback_spans] == ["exitstack.callback FormData.close"] * 2
    for span in callback_spans:
        assert span.attributes is not None
        assert span.attributes[semconv.CALLBACK_KIND] == semconv.KIND_ASYNC_CALLBACK


HOSTILE_NAMES = (
    "../../etc/passwd",
    "evil\nX-Injected: 1\nname",  # a bare LF survives python-multipart's header parser
    "evil%0D%0AX-Injected: 1",  # a CR cannot (400), so browsers percent-encode it
    "evil\x00name",
    "Ω" * 2000,
    "x; rm -rf /.txt",
)
# python-multipart refuses a part header this long (400); either way it must not reach telemetry
TEN_KB_NAME = "Ω" * 5000


@pytest.mark.anyio
async def test_upload_file_names_never_reach_telemetry(
    reader: InMemoryMetricReader, spans: InMemorySpanExporter
) -> None:
    async def endpoint(request: Request) -> JSONResponse:
        form = await read_form(request)
        names = [value.filename for value in form.values() if isinstance(value, UploadFile)]
        return JSONResponse({"names": names})

    app = observed_app(Route("/upload", endpoint, methods=["POST"]), reader, spans)
    async with client_for(app) as client:
        for name in HOSTILE_NAMES:
            body = multipart(file_part("upload", name, b"data"))
            response = await post(client, "/upload", body, MULTIPART)
            assert response.json() == {"names": [name]}  # the name did reach the app
        body = multipart(file_part("upload", TEN_KB_NAME, b"data"))
        response = await post(client, "/upload", body, MULTIPART)
        assert response.status_code in (200, 400)
    recorded: list[str] = []
    for span in spans.get_finished_spans():
        recorded += [span.name, *map(str, (span.attributes or {}).values())]
        for event in span.events:
            recorded += [event.name, *map(str, (event.attributes or {}).values())]
    data = reader.get_metrics_data()
    assert data is not None
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                for point in metric.data.data_points:
                    recorded += map(str, (point.attributes or {}).values())
    assert "FormData.close" in recorded
    leaked = [text for text in recorded for part in ("passwd", "evil", "Ω", "rm -rf") if part in text]
    assert leaked == []


@pytest.mark.anyio
async def test_second_read_returns_the_same_form_and_pushes_one_close(reader: InMemoryMetricReader) -> None:
    async def endpoint(request: Request) -> JSONResponse:
        first = await read_form(request)
        again = await read_form(Request(request.scope, request.receive))
        return JSONResponse({"same": first is again})

    app = Starlette(
        routes=[Route("/", endpoint, methods=["POST"])],
        middleware=[Middleware(ExitStackMiddleware, meter_provider=MeterProvider(metric_readers=[reader]))],
    )
    async with client_for(app) as client:
        response = await post(client, "/", b"a=1", URLENCODED)
    assert response.json() == {"same": True}
    assert closed_forms(reader) == {semconv.OUTCOME_OK: 1}


@pytest.mark.anyio
async def test_other_content_types_give_an_empty_form(reader: InMemoryMetricReader) -> None:
    async with client_for(create_app(TEST_LIMITS, reader=reader)) as client:
        response = await post(client, "/upload", b'{"a": 1}', "application/json")
    assert response.json() == {"fields": {}, "files": []}


@pytest.mark.anyio
async def test_without_the_middleware_nothing_is_read_and_the_error_says_why() -> None:
    async def endpoint(request: Request) -> JSONResponse:
        with pytest.raises(RuntimeError, match="ExitStackMiddleware"):
            await read_form(request)
        return JSONResponse({"body": (await request.body()).decode()})  # still all there

    app = Starlette(routes=[Route("/", endpoint, methods=["POST"])])
    async with client_for(app) as client:
        response = await post(client, "/", b"a=1", URLENCODED)
    assert response.json() == {"body": "a=1"}


@pytest.mark.parametrize(
    ("limit", "value"),
    [
        ("max_files", -1),
        ("max_fields", -1),
        ("max_part_size", 0),
        ("max_file_size", 0),
        ("spool_max_size", 0),
        *[
            (limit, bad)
            for limit in ("max_files", "max_fields", "max_part_size", "max_file_size", "spool_max_size")
            for bad in (math.nan, math.inf, 2.5, True)
        ],
    ],
)
@pytest.mark.anyio
async def test_nonsense_limits_are_refused(limit: str, value: float) -> None:
    limits: dict[str, Any] = {limit: value}

    async def endpoint(request: Request) -> JSONResponse:
        with pytest.raises(ValueError, match=limit):
            await read_form(request, **limits)
        return JSONResponse({})

    app = Starlette(
        routes=[Route("/", endpoint, methods=["POST"])], middleware=[Middleware(ExitStackMiddleware)]
    )
    async with client_for(app) as client:
        assert (await post(client, "/", b"a=1", URLENCODED)).status_code == 200


def upload_scope() -> dict[str, Any]:
    return http_scope("/upload", method="POST", headers=[(b"content-type", MULTIPART.encode())])


# the part is still open when the upload stops
UNFINISHED = file_part("f", "a.bin", b"d" * 8192)[:-2]


@pytest.mark.anyio
async def test_client_disconnecting_mid_upload_closes_what_was_created(
    tempdir: Path, reader: InMemoryMetricReader
) -> None:
    app = create_app(TEST_LIMITS, reader=reader)
    incoming: list[Message] = [
        {"type": "http.request", "body": UNFINISHED[:5000], "more_body": True},
        {"type": "http.request", "body": UNFINISHED[5000:], "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[Message] = []
    opened_mid_upload: list[list[str]] = []

    async def receive() -> Message:
        opened_mid_upload.append(temp_files(tempdir))
        return incoming.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    await app(upload_scope(), receive, send)
    assert opened_mid_upload[-1] != []  # the spooled file was on disk when the client left
    assert sent[0]["status"] == 400
    assert temp_files(tempdir) == []


@pytest.mark.anyio
async def test_cancellation_mid_upload_closes_what_was_created(tempdir: Path) -> None:
    # a server shutting down cancels its requests; the cancellation goes on, the files are closed
    app = create_app(TEST_LIMITS)
    incoming: list[Message] = [{"type": "http.request", "body": UNFINISHED, "more_body": True}]
    sent: list[Message] = []
    opened_mid_upload: list[list[str]] = []

    with anyio.CancelScope() as cancel_scope:

        async def receive() -> Message:
            if incoming:
                return incoming.pop(0)
            opened_mid_upload.append(temp_files(tempdir))
            cancel_scope.cancel()
            await anyio.sleep_forever()
            raise AssertionError("not cancelled")

        async def send(message: Message) -> None:
            sent.append(message)

        await app(upload_scope(), receive, send)
    assert cancel_scope.cancelled_caught
    assert opened_mid_upload[0] != []
    assert sent == []
    assert temp_files(tempdir) == []


@pytest.mark.anyio
async def test_plain_starlette_accepts_a_truncated_body_and_drops_the_cut_off_file() -> None:
    # why read_form checks for the closing boundary: Starlette's form has no trace of the file
    created: list[UploadFile] = []
    original = UploadFile.__init__

    def record(self: UploadFile, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        created.append(self)

    async def plain(request: Request) -> JSONResponse:
        form = await request.form()
        return JSONResponse({"parts": len(form)})

    app = Starlette(routes=[Route("/", plain, methods=["POST"])])
    body = file_part("f", "cut.bin", b"t" * 4096)[:-10]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(UploadFile, "__init__", record)
        async with client_for(app) as client:
            response = await post(client, "/", body, MULTIPART)
    try:
        assert response.json() == {"parts": 0}
        assert len(created) == 1
        assert not created[0].file.closed  # in memory here; on disk past Starlette's 1 MiB spool
    finally:
        for upload in created:
            upload.file.close()
