"""Hostile input never reaches telemetry: no argument value, file name, header value, query or raw
path becomes an attribute; ``http.route`` is only ever a template. Through a real uvicorn; the
stack's own share is in tests/test_telemetry_security.py."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import httpx
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from exitstack_otel import ExitStackMiddleware, get_exit_stack, semconv
from tests.support.hostile import MARK, exported_strings
from tests.support.otel_helpers import Sdk
from tests.support.servers import running_server

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
