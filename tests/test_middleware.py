"""ExitStackMiddleware with raw ASGI messages and through httpx's ASGI transport."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import httpx
import pytest
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from exitstack_otel import semconv
from exitstack_otel.middleware import (
    DEFAULT_SCOPE_KEY,
    DEFAULT_STACK_NAME,
    ExitStackMiddleware,
    get_exit_stack,
)
from exitstack_otel.stack import InstrumentedAsyncExitStack
from tests.support.asgi import http_scope
from tests.support.cleanup_app import CleanupFailed, EndpointFailed, make_app
from tests.support.otel_helpers import Sdk, attrs, histogram_points, number_points

if TYPE_CHECKING:
    from starlette.types import Message, Receive, Scope, Send


def _receive_from(messages: list[Message]) -> Receive:
    pending = list(messages)

    async def receive() -> Message:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    return receive


def _middleware(app: Any, sdk: Sdk, **options: Any) -> ExitStackMiddleware:
    return ExitStackMiddleware(
        app, tracer_provider=sdk.tracer_provider, meter_provider=sdk.meter_provider, **options
    )


# -- raw ASGI -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_lifespan_passes_through_untouched(sdk: Sdk) -> None:
    seen: list[tuple[Scope, Receive, Send]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((scope, receive, send))

    scope: dict[str, Any] = {"type": "lifespan", "asgi": {"version": "3.0"}}
    receive = _receive_from([])

    async def send(message: Message) -> None:
        pass

    await _middleware(app, sdk)(scope, receive, send)
    assert seen == [(scope, receive, send)]
    assert scope == {"type": "lifespan", "asgi": {"version": "3.0"}}
    assert sdk.spans() == ()


@pytest.mark.anyio
async def test_http_cleanup_runs_after_the_last_body_chunk(sdk: Sdk) -> None:
    events: list[str] = []
    stacks: list[InstrumentedAsyncExitStack] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        stack = get_exit_stack(scope, "my_stack")
        stacks.append(stack)
        stack.callback(events.append, "cleanup")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for more_body in (True, True, False):
            await send({"type": "http.response.body", "body": b"x", "more_body": more_body})

    async def send(message: Message) -> None:
        events.append(f"{message['type']} more_body={message.get('more_body', False)}")

    middleware = _middleware(app, sdk, scope_key="my_stack")
    state_before = dict(vars(middleware))
    for _ in range(2):
        scope = http_scope()
        await middleware(scope, _receive_from([]), send)
        assert scope["my_stack"] is stacks[-1]
    assert events == 2 * [
        "http.response.start more_body=False",
        "http.response.body more_body=True",
        "http.response.body more_body=True",
        "http.response.body more_body=False",
        "cleanup",
    ]
    # one stack per request, nothing per request kept on the middleware
    assert stacks[0] is not stacks[1]
    assert stacks[0].name == "my_stack"
    assert vars(middleware) == state_before


@pytest.mark.anyio
async def test_websocket_cleanup_runs_after_close(sdk: Sdk) -> None:
    events: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        get_exit_stack(scope).callback(events.append, "cleanup")
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "hello"})
        await send({"type": "websocket.close", "code": 1000})

    async def send(message: Message) -> None:
        events.append(message["type"])

    scope = {**http_scope("/ws"), "type": "websocket"}
    await _middleware(app, sdk)(scope, _receive_from([{"type": "websocket.connect"}]), send)
    assert events == ["websocket.accept", "websocket.send", "websocket.close", "cleanup"]
    assert isinstance(scope[DEFAULT_SCOPE_KEY], InstrumentedAsyncExitStack)


@pytest.mark.anyio
async def test_endpoint_error_escapes_unchanged_after_cleanup(sdk: Sdk) -> None:
    events: list[str] = []
    error = EndpointFailed("endpoint failed")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        get_exit_stack(scope).callback(events.append, "cleanup")
        raise error

    async def send(message: Message) -> None:
        pass

    with pytest.raises(EndpointFailed) as caught:
        await _middleware(app, sdk, callback_spans="all")(http_scope(), _receive_from([]), send)
    assert caught.value is error
    assert events == ["cleanup"]
    # the unwind itself raised nothing: its cleanup went fine, whatever the endpoint did
    (unwind,) = sdk.spans_named(semconv.SPAN_UNWIND)
    assert semconv.ERROR_TYPE not in dict(unwind.attributes or {})
    assert unwind.status.status_code is StatusCode.UNSET
    (point,) = histogram_points(sdk.metrics()[semconv.UNWIND_DURATION])
    assert attrs(point)[semconv.UNWIND_OUTCOME] == semconv.OUTCOME_OK


@pytest.mark.anyio
async def test_a_suppressing_exit_callback_swallows_the_endpoint_error(sdk: Sdk) -> None:
    seen: list[BaseException | None] = []

    def swallow(exc_type: object, exc: BaseException | None, tb: object) -> bool:
        seen.append(exc)
        return True

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        get_exit_stack(scope).push(swallow)
        raise EndpointFailed("swallowed")

    async def send(message: Message) -> None:
        pass

    await _middleware(app, sdk, callback_spans="all")(http_scope(), _receive_from([]), send)
    assert [type(exc) for exc in seen] == [EndpointFailed]
    spans = [span for span in sdk.spans() if span.name != semconv.SPAN_UNWIND]
    assert [dict(span.attributes or {})[semconv.CALLBACK_OUTCOME] for span in spans] == [
        semconv.OUTCOME_SUPPRESSED
    ]
    (unwind,) = sdk.spans_named(semconv.SPAN_UNWIND)
    assert unwind.status.status_code is StatusCode.UNSET


def test_get_exit_stack_names_the_middleware_when_it_is_missing() -> None:
    scope = http_scope()
    with pytest.raises(RuntimeError, match=r"ExitStackMiddleware.*scope_key='fastapi_middleware_astack'"):
        get_exit_stack(Request(scope))
    scope[DEFAULT_SCOPE_KEY] = object()
    with pytest.raises(RuntimeError, match="found a object"):
        get_exit_stack(scope)
    stack = scope["other"] = InstrumentedAsyncExitStack(telemetry=None)
    assert get_exit_stack(Request(scope), "other") is stack


# -- a Starlette app, raw ASGI and httpx --------------------------------------------------------


@pytest.mark.anyio
async def test_streaming_response_cleanup_follows_the_last_chunk(sdk: Sdk) -> None:
    app = make_app(sdk)
    log: list[str] = app.state.log

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            log.append(f"sent body more_body={message.get('more_body', False)}")

    await app(
        http_scope("/stream"),
        _receive_from([{"type": "http.request", "body": b""}]),
        send,
    )
    assert log[-2:] == ["sent body more_body=False", "cleanup stream"]
    assert log.index("chunk 2") < log.index("cleanup stream")


def _client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


@pytest.mark.anyio
async def test_httpx_ok_and_streaming(sdk: Sdk) -> None:
    app = make_app(sdk, callback_spans="all")
    async with _client(app) as client:
        assert (await client.get("/ok")).text == "ok"
        response = await client.get("/stream")
    assert response.text == "chunk 0\nchunk 1\nchunk 2\n"
    assert app.state.log == ["cleanup ok", "chunk 0", "chunk 1", "chunk 2", "cleanup stream"]
    unwinds = sdk.spans_named(semconv.SPAN_UNWIND)
    assert [dict(span.attributes or {}).get(semconv.HTTP_ROUTE) for span in unwinds] == ["/ok", "/stream"]
    assert {dict(span.attributes or {}).get(semconv.HTTP_REQUEST_METHOD) for span in unwinds} == {"GET"}


@pytest.mark.anyio
async def test_unmatched_paths_have_no_route_and_never_the_raw_path(sdk: Sdk) -> None:
    def cleanup_anyway(scope: Scope, receive: Receive, send: Send) -> Any:
        get_exit_stack(scope).callback(print, end="")
        return PlainTextResponse("not here", status_code=404)(scope, receive, send)

    app = Starlette(
        routes=[Route("/only", cleanup_anyway)],
        middleware=[Middleware(ExitStackMiddleware, tracer_provider=sdk.tracer_provider,
                               meter_provider=sdk.meter_provider, callback_spans="all")],
    )  # fmt: skip
    app.router.default = cleanup_anyway
    async with _client(app) as client:
        assert (await client.get("/no-such-secret-path")).status_code == 404
    (unwind,) = sdk.spans_named(semconv.SPAN_UNWIND)
    assert dict(unwind.attributes or {}) == {
        semconv.STACK_NAME: DEFAULT_STACK_NAME,
        semconv.CALLBACK_COUNT: 1,
        semconv.CALLBACK_FAILED: 0,
        semconv.HTTP_REQUEST_METHOD: "GET",
    }
    assert "secret" not in repr(sdk.metrics())


@pytest.mark.anyio
async def test_a_request_that_pushes_nothing_appears_nowhere(sdk: Sdk) -> None:
    async with _client(make_app(sdk, callback_spans="all")) as client:
        assert (await client.get("/no-such-path")).status_code == 404
    assert sdk.spans() == ()
    assert semconv.UNWIND_DURATION not in sdk.metrics()
    assert semconv.UNWIND_CALLBACKS not in sdk.metrics()


@pytest.mark.anyio
async def test_httpx_failing_cleanup_runs_the_rest_and_escapes(sdk: Sdk) -> None:
    app = make_app(sdk)
    async with _client(app) as client:
        with pytest.raises(CleanupFailed, match="cleanup failed"):
            await client.get("/failing-cleanup")
    assert app.state.log == ["cleanup last pushed", "cleanup broken", "cleanup first pushed"]
    (failed,) = [span for span in sdk.spans() if span.name != semconv.SPAN_UNWIND]
    assert failed.name.endswith(".broken_close")
    assert failed.status.status_code is StatusCode.ERROR
    (unwind,) = sdk.spans_named(semconv.SPAN_UNWIND)
    assert dict(unwind.attributes or {})[semconv.CALLBACK_FAILED] == 1


@pytest.mark.anyio
async def test_httpx_failing_endpoint_still_cleans_up(sdk: Sdk) -> None:
    app = make_app(sdk)
    async with _client(app) as client:
        with pytest.raises(EndpointFailed):
            await client.get("/failing-endpoint")
    assert app.state.log == ["cleanup after failure"]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://testserver"
    ) as client:
        assert (await client.get("/failing-endpoint")).status_code == 500
    assert app.state.log == ["cleanup after failure", "cleanup after failure"]


@pytest.mark.anyio
async def test_httpx_suppressing_exit_callback(sdk: Sdk) -> None:
    app = make_app(sdk, callback_spans="all")
    async with _client(app) as client:  # raises app exceptions: none may escape
        response = await client.get("/suppressed")
    assert (response.status_code, response.text) == (200, "ok")
    assert app.state.log == ["swallowed background task failed"]
    (swallow,) = [span for span in sdk.spans() if span.name != semconv.SPAN_UNWIND]
    assert dict(swallow.attributes or {})[semconv.CALLBACK_OUTCOME] == semconv.OUTCOME_SUPPRESSED


@pytest.mark.anyio
async def test_httpx_context_variables_reach_the_callbacks(sdk: Sdk) -> None:
    app = make_app(sdk)
    async with _client(app) as client:
        await client.get("/context-variable")
    assert app.state.log == ["cleanup sees alice"]


@pytest.mark.anyio
async def test_concurrent_requests_each_get_their_own_stack_and_context(sdk: Sdk) -> None:
    app = make_app(sdk)
    users = [f"user{number}" for number in range(40)]
    async with _client(app) as client, anyio.create_task_group() as task_group:
        for user in users:
            task_group.start_soon(client.get, f"/per-request?user={user}")
    assert sorted(app.state.log) == sorted(
        f"{user}: cleanup sees {user} on its own stack True" for user in users
    )
    assert sdk.spans() == ()  # problems mode: nothing went wrong, so no span
    (unwinds,) = histogram_points(sdk.metrics()[semconv.UNWIND_DURATION])
    assert unwinds.count == len(users)
    active = number_points(sdk.metrics()[semconv.UNWIND_ACTIVE])
    assert [point.value for point in active] == [0]


@pytest.mark.anyio
async def test_httpx_form_is_closed_and_named_without_file_names(sdk: Sdk) -> None:
    app = make_app(sdk, callback_spans="all")
    async with _client(app) as client:
        response = await client.post(
            "/form",
            data={"title": "secret-title"},
            files={"upload": ("secret-report.pdf", b"%PDF secret", "application/pdf")},
        )
    assert response.text == "title,upload"
    (closed,) = [span for span in sdk.spans() if span.name != semconv.SPAN_UNWIND]
    assert closed.name == f"{semconv.SPAN_CALLBACK} FormData.close"
    durations = histogram_points(sdk.metrics()[semconv.CALLBACK_DURATION])
    assert [attrs(point)[semconv.CALLBACK_NAME] for point in durations] == ["FormData.close"]
    assert "secret" not in repr([dict(span.attributes or {}) for span in sdk.spans()])
    assert "secret" not in repr([attrs(point) for point in durations])


@pytest.mark.anyio
async def test_websocket_through_starlette(sdk: Sdk) -> None:
    app = make_app(sdk, callback_spans="all")
    log: list[str] = app.state.log
    incoming: list[Message] = [{"type": "websocket.connect"}, {"type": "websocket.receive", "text": "hi"}]

    async def send(message: Message) -> None:
        log.append(f"sent {message['type']} {message.get('text', '')}".strip())

    await app(
        {**http_scope("/ws"), "type": "websocket"},
        _receive_from(incoming),
        send,
    )
    assert log == [
        "sent websocket.accept",
        "sent websocket.send echo hi",
        "sent websocket.close",
        "websocket closed",
        "cleanup sees bob",
        "cleanup websocket",
    ]
    (unwind,) = sdk.spans_named(semconv.SPAN_UNWIND)
    assert dict(unwind.attributes or {})[semconv.HTTP_ROUTE] == "/ws"


@pytest.mark.anyio
async def test_cancellation_cannot_skip_cleanup(sdk: Sdk) -> None:
    log: list[str] = []

    async def close_slowly() -> None:
        await anyio.lowlevel.checkpoint()  # a real await inside the shielded unwind
        log.append("closed")

    with anyio.CancelScope() as cancel_scope:

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            get_exit_stack(scope).push_async_callback(close_slowly)
            cancel_scope.cancel()  # a disconnect or shutdown while the endpoint waits
            await anyio.sleep_forever()  # until the cancellation, already pending, lands

        async def send(message: Message) -> None:
            pass

        await _middleware(app, sdk)(http_scope(), _receive_from([]), send)
    assert cancel_scope.cancelled_caught
    assert log == ["closed"]


@pytest.mark.anyio
async def test_unwind_is_a_child_of_the_asgi_server_span(sdk: Sdk) -> None:
    app = OpenTelemetryMiddleware(
        make_app(sdk, callback_spans="all"),
        tracer_provider=sdk.tracer_provider,
        meter_provider=sdk.meter_provider,
    )
    async with _client(app) as client:
        assert (await client.get("/ok")).status_code == 200
    (unwind,) = sdk.spans_named(semconv.SPAN_UNWIND)
    (server,) = [span for span in sdk.spans() if span.kind is SpanKind.SERVER]
    assert unwind.parent is not None
    assert unwind.parent.span_id == server.context.span_id
    # the response went out before the unwind began
    (response_start,) = [
        span
        for span in sdk.spans()
        if span.attributes and span.attributes.get("asgi.event.type") == "http.response.start"
    ]
    assert response_start.end_time is not None
    assert unwind.start_time is not None
    assert response_start.end_time <= unwind.start_time
