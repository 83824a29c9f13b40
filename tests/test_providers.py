"""Global providers are looked up per request, straight from the API's module globals."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from opentelemetry import metrics, trace

from exitstack_otel import providers, semconv
from exitstack_otel.middleware import ExitStackMiddleware, get_exit_stack
from exitstack_otel.providers import global_meter_provider, global_tracer_provider
from tests.support.otel_helpers import Sdk, reset_global_providers

if TYPE_CHECKING:
    from collections.abc import Iterator

    from starlette.types import Message, Receive, Scope, Send


@pytest.fixture(autouse=True)
def _fresh_global_providers() -> Iterator[None]:
    reset_global_providers()
    yield
    reset_global_providers()


async def _request(app: ExitStackMiddleware) -> None:
    scope: dict[str, Any] = {"type": "http", "method": "GET", "path": "/", "headers": []}

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        pass

    await app(scope, receive, send)


async def _cleanup() -> None:
    pass


async def _endpoint(scope: Scope, receive: Receive, send: Send) -> None:
    get_exit_stack(scope).push_async_callback(_cleanup)


def test_getters_agree_with_the_api_before_and_after_providers_are_set(sdk: Sdk) -> None:
    assert global_tracer_provider() is trace.get_tracer_provider()
    assert global_meter_provider() is metrics.get_meter_provider()
    trace.set_tracer_provider(sdk.tracer_provider)
    metrics.set_meter_provider(sdk.meter_provider)
    assert global_tracer_provider() is sdk.tracer_provider is trace.get_tracer_provider()
    assert global_meter_provider() is sdk.meter_provider is metrics.get_meter_provider()


@pytest.mark.anyio
async def test_providers_set_after_the_app_is_built_are_used_from_the_next_request(sdk: Sdk) -> None:
    app = ExitStackMiddleware(_endpoint, callback_spans="all")
    await _request(app)
    assert sdk.spans() == ()
    assert sdk.metrics() == {}

    trace.set_tracer_provider(sdk.tracer_provider)
    metrics.set_meter_provider(sdk.meter_provider)
    await _request(app)
    assert [span.name for span in sdk.spans()][-1] == semconv.SPAN_UNWIND
    duration = sdk.metrics()[semconv.CALLBACK_DURATION].data.data_points
    assert [point.count for point in duration] == [1]  # type: ignore[union-attr]


@pytest.mark.parametrize("read_globals", [True, False])
def test_current_finds_the_global_providers_with_and_without_reading_the_api_globals(
    sdk: Sdk, monkeypatch: pytest.MonkeyPatch, read_globals: bool
) -> None:
    # False: what an API release without those globals, or a provider named by env var, gets
    monkeypatch.setattr(providers, "_READ_TRACER_GLOBAL", read_globals)
    monkeypatch.setattr(providers, "_READ_METER_GLOBAL", read_globals)
    source = providers.TelemetrySource()
    assert source.current() is None  # the API's proxies: no telemetry
    trace.set_tracer_provider(sdk.tracer_provider)
    metrics.set_meter_provider(sdk.meter_provider)
    telemetry = source.current()
    assert telemetry is not None
    assert telemetry.tracer is not None
    assert telemetry.instruments is not None
    assert source.current() is telemetry


def test_a_global_provider_that_is_falsy_is_still_the_one_used(sdk: Sdk) -> None:
    class EmptyLookingTracerProvider(type(sdk.tracer_provider)):  # type: ignore[misc]
        def __len__(self) -> int:  # a provider may be a collection of something, and empty
            return 0

    falsy = EmptyLookingTracerProvider()
    trace.set_tracer_provider(falsy)
    source = providers.TelemetrySource()
    telemetry = source.current()  # the API's proxy instead would have meant no telemetry at all
    assert telemetry is not None
    assert telemetry.tracer is not None
