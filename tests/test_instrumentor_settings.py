"""ExitStackInstrumentor reads the OTEL_PYTHON_EXITSTACK_* variables; instrument() keywords win.

In process here; tests/integration/test_instrumentor_settings_zero_code.py runs the same settings
under ``opentelemetry-instrument``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx
import pytest
from starlette.requests import Request

from exitstack_otel import ExitStackMiddleware, TelemetryOptions, semconv, settings
from exitstack_otel.fastapi import instrument_fastapi, uninstrument_fastapi
from exitstack_otel.instrumentor import ExitStackInstrumentor
from tests.support.fastapi_app import build_app
from tests.support.otel_helpers import Sdk, attrs, histogram_points

if TYPE_CHECKING:
    from collections.abc import Iterator

GET_DB_SPAN = f"{semconv.SPAN_CALLBACK} get_db"


@pytest.fixture(autouse=True)
def _uninstrument_afterwards() -> Iterator[None]:
    yield
    if ExitStackInstrumentor().is_instrumented_by_opentelemetry:
        ExitStackInstrumentor().uninstrument()


def instrument(sdk: Sdk, **options: Any) -> None:
    ExitStackInstrumentor().instrument(
        tracer_provider=sdk.tracer_provider, meter_provider=sdk.meter_provider, **options
    )


async def get_item(sdk: Sdk) -> list[str]:
    """Sends one request; the names of the spans made, once its get_db teardown is on record."""
    transport = httpx.ASGITransport(app=build_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        assert (await http.get("/items/1")).status_code == 200
    executed = histogram_points(sdk.metrics()[semconv.CALLBACK_DURATION])
    assert "get_db" in {attrs(point)[semconv.CALLBACK_NAME] for point in executed}
    return [span.name for span in sdk.spans()]


@pytest.mark.anyio
async def test_the_environment_applies_to_instrument_without_keywords(
    sdk: Sdk, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(settings.CALLBACK_SPANS, "all")
    instrument(sdk)
    assert GET_DB_SPAN in await get_item(sdk)


@pytest.mark.anyio
async def test_instrument_keywords_win_over_the_environment(
    sdk: Sdk, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(settings.CALLBACK_SPANS, "all")
    instrument(sdk, callback_spans="problems")
    assert GET_DB_SPAN not in await get_item(sdk)


def test_a_bad_value_stops_instrument_in_code_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(settings.CALLBACK_SPANS, "everything")
    with pytest.raises(SystemExit, match=f"{settings.CALLBACK_SPANS}='everything' is not valid"):
        ExitStackInstrumentor().instrument()
    # nothing was patched: a later, corrected instrument() starts from scratch
    monkeypatch.delenv(settings.CALLBACK_SPANS)
    ExitStackInstrumentor().instrument()
    ExitStackInstrumentor().uninstrument()


# -- ExitStackMiddleware and instrument_fastapi read the same variables ------------------------------


def test_the_middleware_reads_the_environment_and_its_keywords_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(settings.CALLBACK_SPANS, "all")
    monkeypatch.setenv(settings.CALLBACK_TIMEOUT, "2.5")
    from_environment = ExitStackMiddleware(build_app())
    assert from_environment.telemetry.options.callback_spans == "all"
    assert from_environment.callback_timeout == 2.5
    explicit = ExitStackMiddleware(build_app(), callback_spans="problems", callback_timeout=None)
    assert explicit.telemetry.options.callback_spans == "problems"
    assert explicit.callback_timeout is None
    given = ExitStackMiddleware(build_app(), options=TelemetryOptions())  # an options object is all explicit
    assert given.telemetry.options.callback_spans == "problems"


def test_a_bad_value_stops_the_middleware_with_its_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(settings.CALLBACK_TIMEOUT, "-1")
    with pytest.raises(ValueError, match=settings.CALLBACK_TIMEOUT):
        ExitStackMiddleware(build_app())


@pytest.mark.anyio
async def test_instrument_fastapi_reads_the_environment(sdk: Sdk, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(settings.CALLBACK_SPANS, "all")
    app = build_app()
    instrument_fastapi(app, tracer_provider=sdk.tracer_provider, meter_provider=sdk.meter_provider)
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            assert (await http.get("/items/1")).status_code == 200
    finally:
        uninstrument_fastapi(app)
    assert GET_DB_SPAN in [span.name for span in sdk.spans()]


@pytest.mark.anyio
async def test_callback_timeout_from_the_environment_reaches_fastapi_stacks(
    sdk: Sdk, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(settings.CALLBACK_TIMEOUT, "7")
    instrument(sdk)
    stacks: list[float | None] = []

    async def read_timeout(request: Request) -> None:
        stacks.append(request.scope["fastapi_inner_astack"]._callback_timeout)

    app = build_app()
    app.add_api_route("/timeout", read_timeout)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        assert (await http.get("/timeout")).status_code == 200
    assert stacks == [7.0]
