"""Hostile input never reaches telemetry: no argument value, file name, header value, query or raw
path becomes an attribute; callback names are capped; ``http.route`` is only ever a template."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from exitstack_otel import ExitStackMiddleware, InstrumentedAsyncExitStack, get_exit_stack, semconv
from exitstack_otel.telemetry import Telemetry, TelemetryOptions
from tests.support.otel_helpers import Sdk
from tests.support.servers import running_server

MARK = "zx9q"  # in every hostile value; must never show up in what telemetry exports

HOSTILE_FILE_NAMES = [
    f"../../{MARK}/etc/passwd",
    f"<script>alert('{MARK}')</script>.png",
    f"{MARK}\u202egnp.exe",
    f"{MARK} " * 100,
    f"C:\\Users\\{MARK}\\secret.docx",
]


def discard(file_name: str | None) -> None:
    pass


@contextmanager
def scratch_copy(file_name: str | None) -> Iterator[None]:
    yield


async def upload(request: Request) -> PlainTextResponse:
    stack = get_exit_stack(request)
    form = await request.form()
    stack.push_async_callback(form.close)
    for value in form.values():
        if isinstance(value, UploadFile):
            name = value.filename
            stack.callback(partial(discard, name))
            stack.callback(lambda name=name: discard(name))  # type: ignore[misc]  # untyped default
            stack.enter_context(scratch_copy(name))
    return PlainTextResponse("stored")


async def item(request: Request) -> PlainTextResponse:
    stack = get_exit_stack(request)
    stack.callback(discard, request.path_params["item_id"])
    stack.callback(discard, request.headers.get("authorization"))
    return PlainTextResponse("item")


def exported_strings(sdk: Sdk) -> list[tuple[str, str]]:
    """(where, value) for every string the SDK would export, exception events aside."""
    found: list[tuple[str, str]] = []

    def add(where: str, attributes: Any) -> None:
        for key, value in (attributes or {}).items():
            found.append((where, str(key)))
            found.append((f"{where} {key}", str(value)))

    for span in sdk.spans():
        found.append(("span name", span.name))
        add(span.name, span.attributes)
        found.append((f"{span.name} status", span.status.description or ""))
        for event in span.events:
            if event.name != "exception":
                found.append(("event name", event.name))
                add(f"{span.name} event {event.name}", event.attributes)
    data = sdk.reader.get_metrics_data()
    for resource_metrics in data.resource_metrics if data else ():
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                for point in metric.data.data_points:
                    add(metric.name, point.attributes)
    return found


def raw_request(port: int, head: str) -> bytes:
    # paths and methods httpx would normalise or refuse go over a plain socket
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head.encode("latin-1") + b"\r\n\r\n")
        sock.settimeout(10)
        return sock.recv(65536)


HOSTILE_METHODS = [f"PURGE{MARK.upper()}"]


def test_hostile_names_paths_headers_and_methods_never_reach_an_attribute(sdk: Sdk) -> None:
    app = ExitStackMiddleware(
        Starlette(
            routes=[
                Route("/upload/{folder}", upload, methods=["POST"]),
                # any method: a hostile one must reach a stack that has something to report
                Route("/items/{item_id}", item, methods=[*HOSTILE_METHODS, "GET"]),
            ]
        ),
        tracer_provider=sdk.tracer_provider,
        meter_provider=sdk.meter_provider,
        callback_spans="all",  # every callback and push recorded: the most there is to leak
    )
    headers = {"Authorization": f"Bearer {MARK}", "Cookie": f"session={MARK}", "X-Forwarded-For": MARK}
    with running_server(app) as server, httpx.Client(base_url=server.url(), headers=headers) as client:
        files = [("file", (name, b"content", "application/octet-stream")) for name in HOSTILE_FILE_NAMES]
        assert client.post(f"/upload/{MARK}?token={MARK}", files=files).status_code == 200
        assert client.get(f"/items/{MARK}?q={MARK}").status_code == 200
        assert client.get(f"/items/%2E%2E%2F{MARK}%00").status_code == 404
        assert client.get(f"/{MARK}/not/a/route").status_code == 404
        for head in (
            f"GET /items/../../{MARK}/x HTTP/1.1\r\nHost: {MARK}",
            f"PURGE{MARK.upper()} /items/1 HTTP/1.1\r\nHost: x",
            f"GET /items/%ff%fe{MARK} HTTP/1.1\r\nHost: x\r\nUser-Agent: {MARK}",
        ):
            assert raw_request(server.port, head).startswith(b"HTTP/1.1 ")

    strings = exported_strings(sdk)
    unwinds = [span for span in sdk.spans() if span.name == semconv.SPAN_UNWIND]
    assert len(unwinds) == 4  # the upload and three item requests; the 404s pushed nothing
    callback_names = {value for where, value in strings if where.endswith(semconv.CALLBACK_NAME)}
    assert callback_names == {"FormData.close", "discard", "upload.<locals>.<lambda>", "scratch_copy"}
    methods = {value for where, value in strings if where.endswith(semconv.HTTP_REQUEST_METHOD)}
    assert methods == {"GET", "POST", semconv.OTHER_NAME}
    leaks = [(where, value) for where, value in strings if MARK in value.lower()]
    assert leaks == []


@pytest.mark.anyio
async def test_a_failing_callback_exports_its_message_only_in_the_exception_event(sdk: Sdk) -> None:
    # OpenTelemetry's exception event carries exception.message by design; everything else,
    # error.type and the span status included, names the class only.
    telemetry = Telemetry.create(sdk.tracer_provider, sdk.meter_provider, TelemetryOptions())

    def remove(path: str) -> None:
        raise FileNotFoundError(path)

    with pytest.raises(FileNotFoundError):
        async with InstrumentedAsyncExitStack("request", telemetry=telemetry) as stack:
            stack.callback(remove, f"/tmp/{MARK}")

    assert [value for _, value in exported_strings(sdk) if MARK in value] == []
    [failed] = [span for span in sdk.spans() if span.name != semconv.SPAN_UNWIND]
    assert failed.attributes is not None
    assert failed.attributes[semconv.ERROR_TYPE] == "FileNotFoundError"
    [event] = failed.events
    assert event.attributes is not None
    assert MARK in str(event.attributes["exception.message"])


@pytest.mark.anyio
async def test_callback_names_are_capped_per_middleware(sdk: Sdk) -> None:
    telemetry = Telemetry.create(
        sdk.tracer_provider, sdk.meter_provider, TelemetryOptions(max_callback_names=5)
    )

    def noop() -> None:
        pass

    # fifty distinct classes: fifty distinct default names, as generated code could produce
    callables = [type(f"Release{index}", (), {"__call__": lambda self: None})() for index in range(50)]
    async with InstrumentedAsyncExitStack("request", telemetry=telemetry) as stack:
        for release in callables:
            stack.push(partial(lambda release, *exc: release(), release))
            stack.callback(release)

    names = {point.attributes[semconv.CALLBACK_NAME] for point in sdk.points(semconv.CALLBACK_PUSHED)}
    assert len(names) == 6
    assert semconv.OTHER_NAME in names
    pushed = sum(point.value for point in sdk.points(semconv.CALLBACK_PUSHED))
    assert pushed == 100  # capped names, not lost counts


def test_http_route_is_only_ever_a_template(sdk: Sdk) -> None:
    app = ExitStackMiddleware(
        Starlette(
            routes=[Route("/items/{item_id}", item), Route("/upload/{folder}", upload, methods=["POST"])]
        ),
        tracer_provider=sdk.tracer_provider,
        meter_provider=sdk.meter_provider,
        callback_spans="all",
    )
    with running_server(app) as server, httpx.Client(base_url=server.url()) as client:
        for path in ("/items/1", "/items/abc", f"/items/{MARK}?x=1", "/upload/a", f"/{MARK}"):
            client.get(path)
    routes = [
        (span.attributes or {}).get(semconv.HTTP_ROUTE)
        for span in sdk.spans()
        if span.name == semconv.SPAN_UNWIND
    ]
    # the GET of the POST-only upload route and the unmatched path pushed nothing: no unwind
    assert routes == ["/items/{item_id}"] * 3
    metric_routes = {
        point.attributes.get(semconv.HTTP_ROUTE) for point in sdk.points(semconv.UNWIND_DURATION)
    }
    assert metric_routes == {"/items/{item_id}"}
