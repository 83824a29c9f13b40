"""ExitStackMiddleware behind a real uvicorn server on 127.0.0.1, with real httpx and websockets."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
import pytest
from opentelemetry.trace import StatusCode
from websockets.sync.client import connect

from exitstack_otel import semconv
from tests.support.cleanup_app import make_app
from tests.support.otel_helpers import Sdk, attrs, histogram_points
from tests.support.polling import wait_until
from tests.support.servers import running_server

if TYPE_CHECKING:
    from collections.abc import Iterator

    from opentelemetry.sdk.trace import ReadableSpan
    from starlette.applications import Starlette

    from tests.support.servers import RunningServer

# the response reaches the client before the server has unwound: wait, but not forever
CLEANUP_WAIT = 15.0


@pytest.fixture
def app(sdk: Sdk) -> Starlette:
    return make_app(sdk, callback_spans="all")  # an unwind span for each request to wait for


@pytest.fixture
def server(app: Starlette) -> Iterator[RunningServer]:
    with running_server(app) as server:
        yield server


def _unwinds(sdk: Sdk, count: int) -> list[ReadableSpan]:
    wait_until(lambda: len(sdk.spans_named(semconv.SPAN_UNWIND)) >= count, "the unwinds", CLEANUP_WAIT)
    unwinds = sdk.spans_named(semconv.SPAN_UNWIND)
    assert len(unwinds) == count
    return unwinds


def test_ok_and_streaming(sdk: Sdk, app: Starlette, server: RunningServer) -> None:
    with httpx.Client(base_url=server.url()) as client:
        assert client.get("/ok").text == "ok"
        with client.stream("GET", "/stream") as response:
            chunks = list(response.iter_lines())
    assert chunks == ["chunk 0", "chunk 1", "chunk 2"]
    unwinds = _unwinds(sdk, 2)
    assert app.state.log == ["cleanup ok", "chunk 0", "chunk 1", "chunk 2", "cleanup stream"]
    assert [dict(span.attributes or {})[semconv.HTTP_ROUTE] for span in unwinds] == ["/ok", "/stream"]


def test_failing_cleanup_after_a_sent_response(
    sdk: Sdk, app: Starlette, server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    response = httpx.get(server.url("/failing-cleanup"))
    assert (response.status_code, response.text) == (200, "ok")
    (unwind,) = _unwinds(sdk, 1)
    assert app.state.log == ["cleanup last pushed", "cleanup broken", "cleanup first pushed"]
    assert unwind.status.status_code is StatusCode.ERROR
    assert dict(unwind.attributes or {})[semconv.ERROR_TYPE] == "tests.support.cleanup_app.CleanupFailed"

    # the same exception reached the server, which logs it
    def servers_errors() -> list[BaseException | None]:
        return [
            r.exc_info[1] for r in caplog.records if r.exc_info and not r.name.startswith("exitstack_otel")
        ]

    wait_until(servers_errors, "uvicorn's error log of the failed cleanup", CLEANUP_WAIT)
    errors = servers_errors()
    assert [type(error).__name__ for error in errors] == ["CleanupFailed"]
    # and ours, with the route the server's line lacks (tests/test_cleanup_log.py)
    [ours] = [record for record in caplog.records if record.name.startswith("exitstack_otel")]
    assert "(route /failing-cleanup)" in ours.getMessage()


def test_failing_endpoint(sdk: Sdk, app: Starlette, server: RunningServer) -> None:
    assert httpx.get(server.url("/failing-endpoint")).status_code == 500
    _unwinds(sdk, 1)
    assert app.state.log == ["cleanup after failure"]


def test_suppressing_exit_callback(sdk: Sdk, app: Starlette, server: RunningServer) -> None:
    response = httpx.get(server.url("/suppressed"))
    assert (response.status_code, response.text) == (200, "ok")
    (unwind,) = _unwinds(sdk, 1)
    assert app.state.log == ["swallowed background task failed"]
    assert unwind.status.status_code is StatusCode.UNSET
    (point,) = histogram_points(sdk.metrics()[semconv.CALLBACK_DURATION])
    assert attrs(point)[semconv.CALLBACK_OUTCOME] == semconv.OUTCOME_SUPPRESSED


def test_context_variables(sdk: Sdk, app: Starlette, server: RunningServer) -> None:
    assert httpx.get(server.url("/context-variable")).status_code == 200
    _unwinds(sdk, 1)
    assert app.state.log == ["cleanup sees alice"]


def test_websocket(sdk: Sdk, app: Starlette, server: RunningServer) -> None:
    with connect(server.url("/ws", scheme="ws")) as websocket:
        websocket.send("hi")
        assert websocket.recv() == "echo hi"
    (unwind,) = _unwinds(sdk, 1)
    assert app.state.log == ["websocket closed", "cleanup sees bob", "cleanup websocket"]
    assert dict(unwind.attributes or {})[semconv.CALLBACK_COUNT] == 2
